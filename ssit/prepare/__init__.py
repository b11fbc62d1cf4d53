"""Offline stage: fundus photographs -> cropped 512x512 images + saliency maps in WebDataset shards.

Modules: ``decode`` (reduced-scale decoding, mode conversion), ``crop`` (fundus box and crop),
``saliency`` (saliency map), ``sample`` (one image -> one sample), ``shards`` (planning,
parallel writing, resuming, manifest), ``shard_format`` (the on-disk format: manifest, DALI
index, reading helpers), ``synth`` (synthetic graded photographs), ``preview`` (contact sheet),
``workers`` (process pools), ``statistics`` (EyePACS channel mean and std).
"""

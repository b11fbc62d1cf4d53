"""Offline stage: fundus photographs -> cropped 512x512 images + saliency maps in WebDataset shards.

Modules: ``decode`` (reduced-scale decoding, mode conversion), ``crop`` (fundus box and crop),
``saliency`` (saliency map), ``sample`` (one image -> one sample), ``plan`` (labels, listing the
input folder, the shard plan), ``image_size`` (pixel bound read from headers), ``shards``
(parallel writing, resuming, manifest), ``output_lock`` (one run per output folder),
``shard_format`` (the on-disk format: manifest, DALI index, reading helpers), ``synth``
(synthetic graded photographs), ``preview`` (contact sheet), ``workers`` (process pools that die
with their parent and name the file of a dead worker), ``statistics`` (EyePACS channel mean and
std).
"""

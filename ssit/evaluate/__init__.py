"""Grading: how well an encoder's features grade diabetic retinopathy.

Datasets in their distributed layouts (``datasets``), the fine-tune / linear-probe loop
(``finetune``), kNN (``knn``), metrics (``metrics``), reports (``report``), the job run per
(dataset, protocol) (``job``), its submission (``submit``) and ``ssit export`` (``export``).
"""

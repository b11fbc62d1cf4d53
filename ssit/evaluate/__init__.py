"""Grading: how well an encoder's features grade diabetic retinopathy.

Settings (``config``), datasets in their distributed layouts (``datasets``), cached fundus
crops (``crops``) and transforms (``transforms``), the encoder under test (``encoder``) and
which backbone it is (``architecture``), its BatchNorm statistics refreshed (``batchnorm``),
device and precision (``precision``), inference over a loader (``inference``), the fine-tune /
linear-probe loop (``finetune``), kNN (``knn``), metrics (``metrics``), reports (``report``),
the job run per (dataset, protocol) (``job``), its submission (``submit``) and ``ssit export``
(``export``).
"""

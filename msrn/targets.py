"""The values of a target matrix (`MultiLabelData.targets`, N x C int8), shared by data, labels, losses and metrics.

- POSITIVE (1): the label is present.
- NEGATIVE (0): the label is absent.
- DIFFICULT (-1, VOC only): present but hard; positive in training, out of that label's AP ranking,
  and counted negative in thresholded metrics.
- UNKNOWN (-2, the CSV `unknown` column): nobody knows; out of the training loss, out of the AP
  ranking, out of every thresholded count, and out of the co-occurrence denominators.
"""

from __future__ import annotations

POSITIVE = 1
NEGATIVE = 0
DIFFICULT = -1
UNKNOWN = -2
VALUES = (POSITIVE, NEGATIVE, DIFFICULT, UNKNOWN)

"""Shared constants of the pack's nodes."""

CATEGORY_ROOT = "textual_localization"
DATASET_TYPE = "TL_DATASET"
RESULT_TYPE = "TL_RESULT"
OPTIONS_TYPE = "TL_TRAIN_OPTIONS"

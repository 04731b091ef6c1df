"""The offline data sets (``datasets``) and the label and document noise put on them (``noise``)."""

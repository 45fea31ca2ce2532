"""Export for serving: versioned SavedModels with the tokenizer inside the graph, which
TF Serving loads, and `tflm serve`, a server of TF Serving's REST API for them."""

from tflm.export.saved_model import saved_model

__all__ = ["saved_model"]

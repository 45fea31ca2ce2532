"""Export for serving: versioned SavedModels with the tokenizer inside the graph, which
TF Serving loads, and `tflm serve`, a server of TF Serving's REST and gRPC APIs for them."""

from tflm.export.saved_model import saved_model
from tflm.export.server import Server

__all__ = ["Server", "saved_model"]

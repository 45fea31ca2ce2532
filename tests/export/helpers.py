"""Stand-ins and inputs the request-core, batching and gRPC tests share."""

import numpy as np

from tflm.export.predict import RequestError


class Versions:
    """A stand-in for ModelVersions: fixed loaded SavedModels {number: model}."""

    def __init__(self, models):
        self.models = models

    def get(self, version=None):
        number = max(self.models) if version is None else version
        if str(number) not in map(str, self.models):
            raise RequestError(f"Servable not found for request: Specific(m, {version})", 404)
        return int(number), self.models[int(number)]

    def status(self, version=None):
        numbers = sorted(self.models, reverse=True) if version is None else [self.get(version)[0]]
        return [{"version": str(n), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}} for n in numbers]


def strings(*texts):
    return np.array([t.encode() for t in texts], dtype=object)


def generate_inputs(prompts, max_new_tokens=4, temperature=0.0, top_k=0, top_p=1.0, seed=0):
    n = len(prompts)
    return {"prompts": strings(*prompts),
            "max_new_tokens": np.full([n], max_new_tokens, np.int32),
            "temperature": np.full([n], temperature, np.float32),
            "top_k": np.full([n], top_k, np.int32), "top_p": np.full([n], top_p, np.float32),
            "seed": np.full([n], seed, np.int32)}

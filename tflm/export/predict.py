"""The request core of `tflm serve`: errors and the checks a request passes before it runs."""

from http import HTTPStatus

# The gRPC status code TF Serving answers for each HTTP status it answers.
_GRPC_CODES = {
    HTTPStatus.BAD_REQUEST: "INVALID_ARGUMENT",
    HTTPStatus.NOT_FOUND: "NOT_FOUND",
    HTTPStatus.METHOD_NOT_ALLOWED: "UNIMPLEMENTED",
    HTTPStatus.REQUEST_TIMEOUT: "DEADLINE_EXCEEDED",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "RESOURCE_EXHAUSTED",
    HTTPStatus.TOO_MANY_REQUESTS: "RESOURCE_EXHAUSTED",
    HTTPStatus.INTERNAL_SERVER_ERROR: "INTERNAL",
    HTTPStatus.NOT_IMPLEMENTED: "UNIMPLEMENTED",
    HTTPStatus.SERVICE_UNAVAILABLE: "UNAVAILABLE",
    HTTPStatus.GATEWAY_TIMEOUT: "DEADLINE_EXCEEDED",
}


class RequestError(Exception):
    """A request the server refuses. `status`: the HTTP status (400, 404, 405, 413, 503, ...);
    `code`: the matching gRPC status code name ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", ...)."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)

    @property
    def code(self):
        if self.status in _GRPC_CODES:
            return _GRPC_CODES[self.status]
        return "INVALID_ARGUMENT" if 400 <= self.status < 500 else "INTERNAL"

"""The Python client of Clarion's HTTP API.

from clarion_client import Clarion

client = Clarion(api_key="ck_...", base_url="http://localhost:8080")
client.notifications.send(template="order_shipped", to="u-123", data={"orderId": "A1"})
"""

from clarion_client import models
from clarion_client._client import VERSION, AsyncClarion, AsyncPaginator, Clarion, Paginator
from clarion_client._retry import RetryPolicy
from clarion_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ClarionError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SignatureVerificationError,
    UnprocessableError,
)
from clarion_client.webhooks import parse_event, verify_signature

__version__ = VERSION
__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClarion",
    "AsyncPaginator",
    "AuthenticationError",
    "BadRequestError",
    "Clarion",
    "ClarionError",
    "ConflictError",
    "NotFoundError",
    "Paginator",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "SignatureVerificationError",
    "UnprocessableError",
    "models",
    "parse_event",
    "verify_signature",
]

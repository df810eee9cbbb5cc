"""An API server that does not answer is an ApiError a retry may fix, like a 5xx or a 429; a refusal is not."""

import pytest

from internvl_operator.cluster import ApiError
from tests.emulated_cluster import client_for


def test_no_answer_is_a_retryable_api_error():
    with pytest.raises(ApiError) as failed:
        client_for("http://127.0.0.1:9").get("v1", "ConfigMap", "default", "x")  # the discard port: refused
    assert failed.value.status == 0 and failed.value.retryable


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (422, False), (403, False)])
def test_what_a_retry_can_fix(status, retryable):
    assert ApiError(status, "message").retryable is retryable

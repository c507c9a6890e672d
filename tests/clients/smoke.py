"""Drives a running call-orchestrator through a Python client generated from openapi.yaml.

Run by tests/generated_clients.rs with the generated package on PYTHONPATH and BASE_URL set.
"""

import os

from call_orchestrator_client import AuthenticatedClient
from call_orchestrator_client.api.calls import (
    cancel_call,
    create_call,
    create_calls_batch,
    get_call,
    list_call_events,
    list_calls,
    update_call,
)
from call_orchestrator_client.models import (
    BatchCreateRequest,
    CallEnvelope,
    CallPage,
    CreateCallRequest,
    CreateCallRequestMetadata,
    ErrorEnvelope,
    PatchCallRequest,
    Status,
)

client = AuthenticatedClient(base_url=os.environ["BASE_URL"], token=os.environ["API_KEY"])

created = create_call.sync_detailed(
    client=client,
    body=CreateCallRequest(
        to="+1 (415) 555-0100",
        script_id="welcomeFlow",
        metadata=CreateCallRequestMetadata.from_dict({"customerName": "Ada"}),
    ),
    idempotency_key="smoke-1",
)
assert created.status_code == 201, created
call = created.parsed.data
assert call.payload.to == "+14155550100", call
assert call.status == Status.PENDING

again = get_call.sync(client=client, id=call.id)
assert isinstance(again, CallEnvelope) and again.data.id == call.id

patched = update_call.sync(
    client=client,
    id=call.id,
    body=PatchCallRequest(payload={"metadata": {"customerName": "Ada Lovelace"}}),
)
assert isinstance(patched, CallEnvelope), patched
assert patched.data.payload.metadata.to_dict() == {"customerName": "Ada Lovelace"}

refused = update_call.sync(client=client, id=call.id, body=PatchCallRequest(payload={"to": "0"}))
assert isinstance(refused, ErrorEnvelope) and refused.error.code == "VALIDATION_ERROR", refused

cancelled = cancel_call.sync(client=client, id=call.id)
assert cancelled.data.status == Status.CANCELLED

batch = create_calls_batch.sync(
    client=client,
    body=BatchCreateRequest.from_dict(
        {"calls": [{"to": f"+1415555020{i}", "scriptId": "batch"} for i in range(3)]}
    ),
)
assert len(batch.data) == 3, batch

page = list_calls.sync(client=client, status=Status.CANCELLED, limit=10)
assert isinstance(page, CallPage) and page.pagination.total == 1, page
page = list_calls.sync(client=client, limit=2, page=1)
assert page.pagination.total == 4 and page.pagination.total_pages == 2, page

events = list_call_events.sync(client=client, id=call.id)
assert [e.type_.value for e in events.data] == ["CREATED", "UPDATED", "CANCELLED"], events

print("generated client: ok")

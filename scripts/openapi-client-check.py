"""Uses the client generated from openapi/openapi.yaml against a running api.

Run by scripts/openapi-client-check.sh, which generates the `txdx_client`
package and puts it on PYTHONPATH. Every response must parse into the
documented model with no undocumented property left over.
"""

import secrets
import sys

from txdx_client import AuthenticatedClient, Client
from txdx_client.api.auth import get_me, login, register_company
from txdx_client.api.tickets import create_ticket, get_ticket, list_tickets
from txdx_client.models import (
    CreateTicketRequest,
    LoginRequest,
    Problem,
    RegisterRequest,
    RegisterResponse,
    Role,
    TicketPage,
    TicketResponse,
    TicketStatus,
    TokenResponse,
    UserResponse,
)

PASSWORD = "correct horse battery staple"


def check(condition, message):
    if not condition:
        raise SystemExit(f"openapi client check failed: {message}")


def parsed(response, model, status):
    check(
        response.status_code == status,
        f"expected {status}, got {response.status_code}: {response.content[:500]!r}",
    )
    check(isinstance(response.parsed, model), f"expected a {model.__name__}, got {response.parsed!r}")
    leftover = getattr(response.parsed, "additional_properties", {})
    check(not leftover, f"{model.__name__} has undocumented properties {sorted(leftover)}")
    return response.parsed


def main(base_url):
    suffix = secrets.token_hex(4)
    username = f"client-check-{suffix}"
    client = Client(base_url=base_url, raise_on_unexpected_status=True)

    registered = parsed(
        register_company.sync_detailed(
            client=client,
            body=RegisterRequest(
                company_name=f"Client Check {suffix}",
                username=username,
                email=f"{username}@example.com",
                password=PASSWORD,
            ),
        ),
        RegisterResponse,
        201,
    )
    check(registered.user.role == Role.ADMIN, f"the first user is {registered.user.role}")

    problem = parsed(
        login.sync_detailed(client=client, body=LoginRequest(username=username, password="not the password")),
        Problem,
        401,
    )
    check(problem.status == 401 and problem.detail, f"bad login problem: {problem!r}")

    tokens = parsed(
        login.sync_detailed(client=client, body=LoginRequest(username=username, password=PASSWORD)),
        TokenResponse,
        200,
    )
    authed = AuthenticatedClient(base_url=base_url, token=tokens.access_token, raise_on_unexpected_status=True)
    me = parsed(get_me.sync_detailed(client=authed), UserResponse, 200)
    check(me.id == registered.user.id, "get_me answers another user")

    ticket = parsed(
        create_ticket.sync_detailed(
            client=authed,
            body=CreateTicketRequest(subject="Investigate a port scan", description="from the generated client"),
        ),
        TicketResponse,
        201,
    )
    check(ticket.status == TicketStatus.PENDING, f"a manual ticket is {ticket.status}")
    check(ticket.actions == [], f"a manual ticket has actions {ticket.actions!r}")
    check(ticket.company_id == registered.company.id, "the ticket is in another company")

    again = parsed(get_ticket.sync_detailed(client=authed, id=ticket.id), TicketResponse, 200)
    check(again.subject == "Investigate a port scan", f"read back {again.subject!r}")
    page = parsed(list_tickets.sync_detailed(client=authed, status=TicketStatus.PENDING), TicketPage, 200)
    check([t.id for t in page.items] == [ticket.id], f"the list shows {[t.id for t in page.items]}")

    invalid = parsed(
        create_ticket.sync_detailed(client=authed, body=CreateTicketRequest(subject="   ")),
        Problem,
        422,
    )
    check(invalid.field == "subject", f"the bad ticket's problem names {invalid.field!r}")

    print(f"openapi client check: registered {username}, logged in, created ticket {ticket.id}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: openapi-client-check.py BASE_URL")
    main(sys.argv[1])

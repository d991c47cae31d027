"""``zhiying profile show`` and ``zhiying events count``.

Both read the warehouse. While ``zhiying serve`` runs it owns the embedded
DuckDB file; opening it here then raises ``StoreBusy`` and these commands ask
the running server instead (``ZHIYING_API_URL`` with the admin key in
``ZHIYING_API_KEY``), or say what to do when no key is set.

The profile service and the stores are imported inside the functions so that
the CLI starts without them (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from zhiying.cli.common import console, err_console
from zhiying.errors import StoreBusy, ZhiyingError

if TYPE_CHECKING:
    from zhiying.config import Settings
    from zhiying.runtime import Stores

profile_app = typer.Typer(
    help="People (ONE_IDs): identifiers, traits, activity.", no_args_is_help=True
)
events_app = typer.Typer(help="The event table in the warehouse.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _remote(settings: Settings, path: str, busy: StoreBusy) -> dict[str, Any]:
    if not settings.api_key:
        raise _fail(
            f"{busy.message}.\nTo read through that server set ZHIYING_API_KEY to an admin key "
            "(create one with `zhiying keys create --admin`) and, if it does not listen on "
            f"{settings.api_url}, ZHIYING_API_URL."
        )
    url = settings.api_url.rstrip("/") + path
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {settings.api_key}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise _fail(f"{detail} (from the server at {settings.api_url})") from exc
    except urllib.error.URLError as exc:
        raise _fail(
            f"{busy.message}, and no server answers at {settings.api_url} ({exc.reason}); "
            "set ZHIYING_API_URL to the running server"
        ) from exc


def _fetch(path: str, local: Callable[[Stores], dict[str, Any]]) -> dict[str, Any]:
    """Answer from the local stores, or from the running server when it holds them."""
    from zhiying.config import get_settings
    from zhiying.runtime import open_stores

    settings = get_settings()
    try:
        stores = open_stores(settings)
    except StoreBusy as busy:
        return _remote(settings, path, busy)
    except ZhiyingError as exc:
        raise _fail(exc.message) from exc
    try:
        return local(stores)
    except ZhiyingError as exc:
        raise _fail(exc.message) from exc
    finally:
        stores.close()


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render_profile(profile: dict[str, Any]) -> None:
    console.print(f"[bold]{profile['one_id']}[/bold]")
    if profile["merged"]:
        console.print(f"merged into it: {', '.join(profile['merged'])}")
    console.print(
        f"first seen {profile['first_seen'] or '-'}, last seen {profile['last_seen'] or '-'}"
    )
    idents = Table("kind", "value", "first seen", "last seen", title="identifiers")
    for i in profile["identifiers"]:
        idents.add_row(i["kind"], i["value"], i["first_seen"], i["last_seen"])
    console.print(idents)
    traits = Table("trait", "value", "set at", title="traits")
    for t in profile["traits"]:
        traits.add_row(t["key"], _show(t["value"]), t["updated_at"])
    console.print(traits)
    if profile.get("tags"):
        tags = Table("tag", "value", title="tags")
        for name, value in profile["tags"].items():
            tags.add_row(name, _show(value))
        console.print(tags)
    counts = profile["counts"]
    table = Table("events", "count", title=f"events: {counts['total']}")
    for kind, n in counts["by_type"].items():
        table.add_row(f"type {kind}", str(n))
    for name, n in counts["by_event"].items():
        table.add_row(name, str(n))
    console.print(table)


@profile_app.command("show")
def show(
    ref: str = typer.Argument(..., help="A ONE_ID or kind:value, e.g. user_id:42 or phone:138…"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show a person: identifiers, current traits, event counts, first/last seen."""
    from zhiying.profiles import service

    profile = _fetch(
        f"/api/profiles/{urllib.parse.quote(ref, safe='')}",
        lambda stores: service.get_profile(stores, ref).as_dict(),
    )
    if as_json:
        print(json.dumps(profile, ensure_ascii=False, indent=2))
    else:
        render_profile(profile)


@events_app.command("count")
def count(
    event: str | None = typer.Option(None, "--event", help="Only track events of this name."),
) -> None:
    """Count the events stored in the warehouse."""
    from zhiying.profiles import service

    query = "" if event is None else "?" + urllib.parse.urlencode({"event": event})
    result = _fetch(
        f"/api/events/count{query}",
        lambda stores: {"event": event, "count": service.count_events(stores, event)},
    )
    label = f" {event!r}" if event is not None else ""
    console.print(f"{result['count']} events{label}")

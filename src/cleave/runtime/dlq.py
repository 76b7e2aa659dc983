"""Every dead letter of an app: what ``cleave dlq`` and the dashboard work on.

Dead letters live in each consuming service's own database
(:mod:`cleave.data.deadletters`). :class:`AppDeadLetters` puts those stores
together: from a running host's databases (the monolith's dashboard), or by
opening each service's database from the plan (``cleave dlq``, the dashboard
of ``cleave up``), whether the app runs or not.

Replaying marks letters; a host that runs their consumer replays them within
a second, at once when it is woken. :meth:`AppDeadLetters.replay` waits, up to
a bound, to say what became of each::

    async with AppDeadLetters.open(loaded) as letters:
        for done in await letters.replay(["3f9a2c1b7d04"], wait=10):
            print(done.id, done.outcome, done.error)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from cleave.data.deadletters import DeadLetter, DeadLetterStore, Replayed
from cleave.errors import ConfigError

if TYPE_CHECKING:
    from cleave.app import App, LoadedApp
    from cleave.runtime.host import Host

__all__ = ["AppDeadLetters"]


class AppDeadLetters:
    """The dead letters of every service of an app that consumes events.

    ``stores`` maps each such service to its store, or to None while it has
    no database yet (it never ran). ``wake`` tells a host in this process to
    look for letters to replay at once.
    """

    def __init__(
        self,
        app: App,
        stores: Mapping[str, DeadLetterStore | None],
        *,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.stores = dict(stores)
        self.wake = wake

    @classmethod
    def of_host(cls, host: Host) -> AppDeadLetters:
        """The letters of the services ``host`` runs, through its own databases."""
        stores = {
            name: DeadLetterStore(host.databases[name], name)
            for name in host.names
            if host.app.services[name].subscriptions
        }
        return cls(host.app, stores, wake=host.replayer.wake)

    @classmethod
    @asynccontextmanager
    async def open(cls, loaded: LoadedApp) -> AsyncIterator[AppDeadLetters]:
        """Open the database of each consuming service of ``loaded`` (from its plan)."""
        from cleave.data.database import Database

        opened: list[Database] = []
        stores: dict[str, DeadLetterStore | None] = {}
        try:
            for name, spec in loaded.app.services.items():
                if not spec.subscriptions:
                    continue
                url = loaded.plan.database_url(name, loaded.data_dir)
                if url.startswith("sqlite") and not _exists(url.split(":///", 1)[1]):
                    stores[name] = None  # never ran here: no database, no letters
                    continue
                # Only Cleave's tables: the service's own schema is not ours to touch here.
                db = Database().bind(name, url, {})
                try:
                    await db.start()
                except (sa.exc.SQLAlchemyError, OSError) as exc:
                    raise ConfigError(
                        f"cannot open the database of {name} ({url}): {exc}; is it reachable?"
                    ) from exc
                opened.append(db)
                stores[name] = DeadLetterStore(db, name)
            yield cls(loaded.app, stores)
        finally:
            for db in opened:
                await db.stop()

    def _stores(self, service: str | None) -> list[DeadLetterStore]:
        if service is not None:
            if service not in self.app.services:
                raise ConfigError(
                    f"app {self.app.name} has no service {service!r} "
                    f"(services: {', '.join(self.app.services)})"
                )
            if service not in self.stores:
                raise ConfigError(
                    f"{service} consumes no events, so it has no dead letters "
                    f"(services that do: {', '.join(self.stores) or 'none'})"
                )
            found = self.stores[service]
            return [found] if found is not None else []
        return [s for s in self.stores.values() if s is not None]

    async def letters(self, service: str | None = None) -> list[DeadLetter]:
        """Every letter (of ``service``), oldest failure first."""
        found = [letter for store in self._stores(service) for letter in await store.find()]
        return sorted(found, key=lambda letter: letter.failed_at)

    async def get(self, letter_id: str) -> DeadLetter:
        """The letter with this id, in whichever service's database it is."""
        for store in self._stores(None):
            letter = await store.get(letter_id)
            if letter is not None:
                return letter
        raise ConfigError(
            f"no dead letter {letter_id!r} in app {self.app.name}; "
            f"`cleave dlq list` shows the ids of those there are"
        )

    async def _chosen(
        self, ids: Sequence[str] | None, service: str | None
    ) -> list[tuple[DeadLetterStore, list[str] | None]]:
        """(store, ids in it, or None for all) for ``ids``, or for every letter (of ``service``)."""
        stores = self._stores(service)  # checks the service's name first
        if ids is None:
            return [(store, None) for store in stores]
        by_service: dict[str, list[str]] = {}
        for letter_id in dict.fromkeys(ids):
            letter = await self.get(letter_id)
            if service is not None and letter.service != service:
                raise ConfigError(
                    f"dead letter {letter_id} is {letter.service}'s, not {service}'s; "
                    "leave out --service, or give an id of its letters"
                )
            by_service.setdefault(letter.service, []).append(letter_id)
        return [(store, by_service[s]) for s, store in self._live() if s in by_service]

    def _live(self) -> list[tuple[str, DeadLetterStore]]:
        return [(s, store) for s, store in self.stores.items() if store is not None]

    async def replay(
        self, ids: Sequence[str] | None = None, *, service: str | None = None, wait: float = 10.0
    ) -> list[Replayed]:
        """Replay the letters ``ids`` (None: all, of ``service``); what became of each.

        Waits up to ``wait`` seconds for the hosts that run their consumers; a
        letter no host took by then is ``requested``: it is replayed when its
        service runs.
        """
        marked: list[tuple[DeadLetterStore, DeadLetter]] = []
        for store, chosen in await self._chosen(ids, service):
            marked += [(store, letter) for letter in await store.mark(chosen)]
        if self.wake is not None:
            self.wake()
        results: dict[str, Replayed] = {}
        deadline = time.monotonic() + wait
        while True:
            for store, letter in marked:
                if letter.id in results:
                    continue
                now = await store.get(letter.id)
                if now is None:  # replayed (or it was already in the inbox) and removed
                    results[letter.id] = Replayed.of(letter, "replayed")
                elif now.replay_requested_at is None:  # a host tried, and it failed again
                    results[letter.id] = Replayed.of(letter, "failed", now.error)
            if len(results) == len(marked) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        return [results.get(letter.id) or Replayed.of(letter, "requested") for _, letter in marked]

    async def purge(
        self, ids: Sequence[str] | None = None, *, service: str | None = None
    ) -> list[DeadLetter]:
        """Delete the letters ``ids`` (None: all, of ``service``); those deleted."""
        purged: list[DeadLetter] = []
        for store, chosen in await self._chosen(ids, service):
            purged += await store.purge(chosen)
        return purged


def _exists(path: str) -> bool:
    return Path(path).exists()  # a stat: too quick to be worth a thread

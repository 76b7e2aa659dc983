"""Declaring several majors of a contract, adapters, deprecation: what is accepted, refused."""

from __future__ import annotations

from typing import Protocol

import pytest

import cleave
from cleave.audience import publish_versions
from cleave.contracts import deprecation_of, method_of, spec_of
from cleave.service import spec_of_service
from cleave.testing import build, published


class Put(cleave.Message):
    key: str


class PutV2(cleave.Message):
    key: str
    ttl: int


class Done(cleave.Message):
    ok: bool


class Stored(cleave.Event, topic="stored"):
    key: str


@cleave.deprecated(reason="stored v2 names the ttl")
class StoredOld(cleave.Event, topic="stored_old"):
    key: str


class StoredV2(cleave.Event, topic="stored", version=2):
    key: str
    ttl: int


@cleave.contract("kv", version=1, events=[Stored, StoredOld])
class KvV1(Protocol):
    @cleave.deprecated(reason="use kv v2's put")
    async def put(self, req: Put) -> Done: ...

    async def ping(self, req: Put) -> Done: ...


@cleave.contract("kv", version=2, events=[StoredV2])
class Kv(Protocol):
    async def put(self, req: PutV2) -> Done: ...

    async def ping(self, req: Put) -> Done: ...


@cleave.contract("other", version=1)
class Other(Protocol):
    async def ping(self, req: Put) -> Done: ...


class KvService(cleave.Service, implements=Kv, also=[KvV1]):
    db = cleave.Database()

    async def put(self, req: PutV2) -> Done:
        async with self.db.transaction() as tx:
            publish_versions(tx, StoredV2(key=req.key, ttl=req.ttl), Stored(key=req.key))
        return Done(ok=True)

    @cleave.adapts(KvV1.put)
    async def put_v1(self, req: Put) -> Done:
        return await self.put(PutV2(key=req.key, ttl=0))

    async def ping(self, req: Put) -> Done:
        return Done(ok=True)


def test_a_service_serves_every_major_it_declares() -> None:
    spec = spec_of_service(KvService)
    assert spec.majors == [2, 1]
    assert spec.contract is spec_of(Kv)
    assert spec.handlers[method_of(KvV1.put)] == "put_v1"
    assert spec.handlers[method_of(KvV1.ping)] == "ping"  # unchanged: shared
    assert spec.handlers[method_of(Kv.put)] == "put"
    assert set(spec.events) == {Stored, StoredOld, StoredV2}


def test_deprecation_is_visible_on_the_specs() -> None:
    assert method_of(KvV1.put).deprecated == "use kv v2's put"
    assert method_of(KvV1.ping).deprecated is None
    assert spec_of(KvV1).deprecated is None
    assert spec_of(KvV1).deprecated_events == {StoredOld: "stored v2 names the ttl"}
    assert deprecation_of(StoredOld) == "stored v2 names the ttl"

    @cleave.deprecated(reason="use v3")
    @cleave.contract("whole", version=1)
    class Whole(Protocol):
        async def ping(self, req: Put) -> Done: ...

    @cleave.contract("below", version=1)
    @cleave.deprecated(reason="use v2")
    class Below(Protocol):
        async def ping(self, req: Put) -> Done: ...

    assert spec_of(Whole).deprecated == "use v3"
    assert method_of(Whole.ping).deprecated == "use v3"
    assert method_of(Below.ping).deprecated == "use v2"


def test_deprecated_needs_a_reason() -> None:
    with pytest.raises(cleave.DefinitionError, match="needs a reason"):
        cleave.deprecated(reason=" ")


def test_an_older_major_method_without_an_answer_is_refused() -> None:
    with pytest.raises(cleave.DefinitionError, match=r"@cleave.adapts\(KvV1.put\)"):

        class Missing(cleave.Service, implements=Kv, also=[KvV1]):
            db = cleave.Database()

            async def put(self, req: PutV2) -> Done: ...

            async def ping(self, req: Put) -> Done: ...


def test_also_takes_majors_of_the_same_contract_once() -> None:
    with pytest.raises(cleave.DefinitionError, match="also= takes other majors of kv only"):

        class Mixed(cleave.Service, implements=Kv, also=[Other]):
            db = cleave.Database()

            async def put(self, req: PutV2) -> Done: ...

            async def ping(self, req: Put) -> Done: ...

    with pytest.raises(cleave.DefinitionError, match="kv v2 is named twice"):

        class Twice(cleave.Service, implements=Kv, also=[Kv]):
            db = cleave.Database()

            async def put(self, req: PutV2) -> Done: ...

            async def ping(self, req: Put) -> Done: ...

    with pytest.raises(cleave.DefinitionError, match="add implements=<newest major>"):

        class NoNewest(cleave.Service, also=[KvV1]):
            pass


def test_an_adapter_of_a_major_not_served_is_refused() -> None:
    with pytest.raises(cleave.DefinitionError, match=r"a major .* does not serve; add its"):

        class Stray(cleave.Service, implements=Kv):
            db = cleave.Database()

            async def put(self, req: PutV2) -> Done: ...

            async def ping(self, req: Put) -> Done: ...

            @cleave.adapts(KvV1.put)
            async def put_v1(self, req: Put) -> Done: ...


def test_an_adapter_must_have_the_older_signature() -> None:
    with pytest.raises(cleave.DefinitionError, match="takes PutV2 but the contract says Put"):

        class Wrong(cleave.Service, implements=Kv, also=[KvV1]):
            db = cleave.Database()

            async def put(self, req: PutV2) -> Done: ...

            async def ping(self, req: Put) -> Done: ...

            @cleave.adapts(KvV1.put)
            async def put_v1(self, req: PutV2) -> Done: ...


def test_an_app_refuses_a_caller_of_a_major_nobody_serves() -> None:
    class OnlyV2(cleave.Service, implements=Kv):
        db = cleave.Database()

        async def put(self, req: PutV2) -> Done: ...

        async def ping(self, req: Put) -> Done: ...

    class Caller(cleave.Service, implements=Other):
        kv = cleave.use(KvV1)

        async def ping(self, req: Put) -> Done: ...

    with pytest.raises(cleave.DefinitionError, match=r"calls kv v1 but .*OnlyV2 serves v2; keep"):
        cleave.App("a", services=[OnlyV2, Caller])
    app = cleave.App("a", services=[KvService, Caller])
    assert [(e.source, e.target) for e in app.edges] == [("other", "kv")]


def test_publish_versions_refuses_a_mismatch() -> None:
    with pytest.raises(cleave.DefinitionError, match="pass the newest first"):
        publish_versions(None, Stored(key="k"), StoredV2(key="k", ttl=1))  # type: ignore[arg-type]
    with pytest.raises(cleave.DefinitionError, match="must have the topic 'stored'"):
        publish_versions(None, StoredV2(key="k", ttl=1), StoredOld(key="k"))  # type: ignore[arg-type]


async def test_outside_a_host_every_version_is_published() -> None:
    async with build(KvService) as kv:
        assert await kv.put_v1(Put(key="a")) == Done(ok=True)
        assert await published(kv) == [StoredV2(key="a", ttl=0), Stored(key="a")]

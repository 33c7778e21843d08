"""Creating topics waits for a controller in the admin client's metadata (a fake admin: the
real one's create_topics fails on `None.nodeId` while a starting cluster names none)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from router.adapters.topics import (
    BrokerUnreachable,
    NoController,
    Topics,
    ensure_topics,
    wait_for_controller,
)
from router.settings import Settings


@dataclass(frozen=True)
class Broker:
    nodeId: int  # aiokafka's BrokerMetadata field


@dataclass
class FakeCluster:
    known: list[Broker] = field(default_factory=list)
    controller: Broker | None = None

    def brokers(self) -> set[Broker]:
        return set(self.known)


@dataclass
class FakeClient:
    """Answers with no brokers for `empty_answers` metadata refreshes, then with three."""

    empty_answers: int
    cluster: FakeCluster = field(default_factory=FakeCluster)
    refreshes: int = 0

    async def force_metadata_update(self) -> bool:
        self.refreshes += 1
        if self.refreshes > self.empty_answers:
            self.cluster.known = [Broker(1), Broker(2), Broker(3)]
            self.cluster.controller = Broker(2)
            return True
        return False


@dataclass
class FakeAdmin:
    _client: FakeClient
    created: list[list[Any]] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    async def list_topics(self) -> list[str]:
        return self.topics

    async def create_topics(self, new: list[Any]) -> None:
        if self._client.cluster.controller is None:  # what aiokafka does
            raise AttributeError("'NoneType' object has no attribute 'nodeId'")
        self.created.append(new)

    async def close(self) -> None:
        pass


async def test_it_refreshes_the_metadata_until_a_controller_is_known() -> None:
    admin = FakeAdmin(FakeClient(empty_answers=3))
    await wait_for_controller(admin, timeout=5, where="kafka://x:9092", poll=0.01)
    assert admin._client.refreshes == 4
    assert admin._client.cluster.controller == Broker(2)


async def test_a_known_controller_needs_no_refresh() -> None:
    admin = FakeAdmin(FakeClient(empty_answers=0))
    admin._client.cluster = FakeCluster([Broker(1)], Broker(1))
    await wait_for_controller(admin, timeout=5, where="kafka://x:9092")
    assert admin._client.refreshes == 0


async def test_it_gives_up_after_the_wait_and_says_what_is_missing() -> None:
    admin = FakeAdmin(FakeClient(empty_answers=10**6))
    with pytest.raises(NoController) as caught:
        await wait_for_controller(admin, timeout=0.2, where="kafka://x:9092", poll=0.01)
    message = str(caught.value)
    assert "kafka://x:9092 answered, but its metadata named no controller within 0 s" in message
    assert "brokers known: none" in message and "Kafka Server started" in message
    assert isinstance(caught.value, BrokerUnreachable)  # the CLI prints it without a trace
    assert admin._client.refreshes > 1


async def test_ensure_topics_creates_them_once_a_controller_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = FakeAdmin(FakeClient(empty_answers=2))

    async def connect(settings: Settings) -> FakeAdmin:
        return admin

    monkeypatch.setattr("router.adapters.topics.connect_admin", connect)
    topics = Topics.with_prefix("t.")
    created = await ensure_topics(Settings(broker="kafka://x:9092"), topics)
    assert created == topics.all()
    assert [t.name for t in admin.created[0]] == topics.all()

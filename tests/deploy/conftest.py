"""tests/deploy: the live metric-name check reuses the integration fixtures (a session-wide
embedded broker on a free loopback port); the static manifest checks need none of them."""

from tests.integration.conftest import broker  # noqa: F401

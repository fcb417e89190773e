"""The simulator's teeth: with each deliberate protocol bug (``deltaferry/failpoints.py:BUGS``)
switched on, some seed within ``TEETH_BOUND`` fails an invariant, and that seed passes with
the bug off. Histories as ``tests/test_simulation.py`` plays them (``history``), from seed
``DELTAFERRY_SIM_SEED_BASE`` (default 0); the seeds-to-detect are printed."""

from __future__ import annotations

import pytest

from deltaferry.failpoints import BUGS, bugs_on
from tests.test_simulation import SEED_BASE, history

pytestmark = [pytest.mark.simulation, pytest.mark.slow]

# seeds a deliberate bug must be caught within (each was caught well inside it when set;
# the measured seeds-to-detect are printed)
TEETH_BOUND = 100


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_the_simulator_catches_each_protocol_bug(bug: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Teeth: with the bug on, some seed within ``TEETH_BOUND`` fails an invariant."""
    with bugs_on(bug):
        for n, seed in enumerate(range(SEED_BASE, SEED_BASE + TEETH_BOUND), start=1):
            world = history(seed)
            if world.stats.failures:
                break
        else:
            pytest.fail(f"bug {bug} was not caught in {TEETH_BOUND} seeds")
    first = world.stats.failures[0].splitlines()[0]
    with capsys.disabled():
        print(f"\nbug {bug}: caught by seed {seed} after {n} seed(s): {first}")
    # it was the bug that failed the seed, nothing else
    assert not history(seed).stats.failures, f"seed {seed} fails without bug {bug} too"

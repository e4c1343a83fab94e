"""The external port allocator: the wanted port, else the nearest usable one."""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from gateway.allocator import DYNAMIC_HIGH, DYNAMIC_LOW, Allocator


def only(*ports: int) -> Callable[[int], bool]:
    allowed = set(ports)
    return allowed.__contains__


def all_but(*ports: int) -> Callable[[int], bool]:
    taken = set(ports)
    return lambda port: port not in taken


def nothing(port: int) -> bool:
    return False


def test_the_wanted_port_is_chosen_when_usable() -> None:
    assert Allocator(random.Random(1)).choose(6000, all_but(6001, 5999)) == 6000


def test_a_taken_port_gives_way_to_the_port_above() -> None:
    assert Allocator().choose(6000, all_but(6000)) == 6001


def test_the_port_below_is_chosen_when_it_is_nearer() -> None:
    assert Allocator().choose(6000, all_but(6000, 6001)) == 5999


def test_ties_go_to_the_port_above() -> None:
    assert Allocator().choose(6000, only(5990, 6010)) == 6010


def test_the_nearest_port_wins_over_the_first_found_above() -> None:
    assert Allocator().choose(6000, only(5997, 6004)) == 5997


def test_wanted_zero_starts_at_a_seeded_random_dynamic_port() -> None:
    start = random.Random(42).randint(DYNAMIC_LOW, DYNAMIC_HIGH)
    assert Allocator(random.Random(42)).choose(0, all_but()) == start
    # and walks outwards from there like any other wanted port
    assert Allocator(random.Random(42)).choose(0, all_but(start)) == start + 1


def test_wanted_zero_picks_different_ports_for_different_seeds() -> None:
    chosen = {Allocator(random.Random(seed)).choose(0, all_but()) for seed in range(20)}
    assert len(chosen) > 10
    assert all(port is not None and DYNAMIC_LOW <= port <= DYNAMIC_HIGH for port in chosen)


def test_wanted_zero_stays_within_narrow_bounds() -> None:
    assert Allocator(random.Random(3)).choose(0, all_but(), low=100, high=100) == 100
    port = Allocator(random.Random(3)).choose(0, all_but(), low=10, high=20)
    assert port is not None and 10 <= port <= 20


def test_a_wanted_port_outside_the_bounds_gives_the_nearest_bound() -> None:
    assert Allocator().choose(80, all_but(), low=1024, high=2000) == 1024
    assert Allocator().choose(3000, all_but(), low=1024, high=2000) == 2000
    assert Allocator().choose(80, all_but(1024), low=1024, high=2000) == 1025


def test_the_search_never_leaves_the_bounds() -> None:
    assert Allocator().choose(1024, only(1023, 1030), low=1024, high=2000) == 1030
    assert Allocator().choose(2000, only(2001, 1990), low=1024, high=2000) == 1990


def test_nothing_usable_gives_none() -> None:
    assert Allocator().choose(6000, nothing) is None
    assert Allocator(random.Random(5)).choose(0, nothing, low=1, high=500) is None
    assert Allocator().choose(6000, all_but(), low=10, high=5) is None


def test_the_only_usable_port_is_found_at_either_end() -> None:
    assert Allocator().choose(65535, only(1)) == 1
    assert Allocator().choose(1, only(65535)) == 65535


ports = st.integers(min_value=1, max_value=300)


@st.composite
def searches(draw: st.DrawFn) -> tuple[int, set[int], int, int, int]:
    low = draw(ports)
    high = draw(st.integers(min_value=low, max_value=300))
    wanted = draw(st.integers(min_value=0, max_value=310))
    usable = draw(st.sets(st.integers(min_value=0, max_value=310), max_size=12))
    seed = draw(st.integers(min_value=0, max_value=2**32))
    return wanted, usable, low, high, seed


@given(searches())
def test_the_choice_is_usable_within_bounds_and_nearest(
    search: tuple[int, set[int], int, int, int],
) -> None:
    wanted, usable, low, high, seed = search
    chosen = Allocator(random.Random(seed)).choose(wanted, usable.__contains__, low, high)
    candidates = {port for port in usable if low <= port <= high}
    if not candidates:
        assert chosen is None
        return
    assert chosen in candidates
    if wanted == 0:
        return  # the start is random; usable and in bounds is all there is to promise
    target = min(max(wanted, low), high)
    best = min(abs(port - target) for port in candidates)
    assert abs(chosen - target) == best
    if target + best in candidates:
        assert chosen == target + best  # ties go above


@given(
    st.integers(min_value=0, max_value=2**32),
    st.sets(st.integers(1024, 65535), min_size=1, max_size=8),
)
def test_wanted_zero_is_nearest_to_the_seeded_start(seed: int, usable: set[int]) -> None:
    start = random.Random(seed).randint(DYNAMIC_LOW, DYNAMIC_HIGH)
    chosen = Allocator(random.Random(seed)).choose(0, usable.__contains__)
    best = min(abs(port - start) for port in usable)
    assert chosen in (start + best, start - best)
    if start + best in usable:
        assert chosen == start + best

"""The (S,G) Assert state machine (RFC 7761 4.6.1), driven without sockets."""

from __future__ import annotations

from mgm.plugins.pim.asserts import INFINITE_METRIC, INFINITE_PREFERENCE, WINNER, Asserts, Metric

KEY = ("10.1.1.2", "239.1.1.1", 3)
US = Metric(False, 0, 10, "10.0.0.5")


def test_the_rfc_order_spt_then_preference_then_metric_then_the_higher_address() -> None:
    assert Metric(False, 100, 50, "10.0.0.1").beats(Metric(True, 0, 0, "10.0.0.9"))
    assert Metric(False, 0, 50, "10.0.0.1").beats(Metric(False, 1, 0, "10.0.0.9"))
    assert Metric(False, 0, 9, "10.0.0.1").beats(Metric(False, 0, 10, "10.0.0.9"))
    assert Metric(False, 0, 10, "10.0.0.10").beats(Metric(False, 0, 10, "10.0.0.9"))  # numerically, not as text
    assert not US.beats(Metric(False, 0, 10, "10.0.0.5")), "a tie on everything is no win"


def test_a_packet_on_our_outgoing_interface_makes_us_assert_and_win_until_a_better_assert() -> None:
    a = Asserts()
    a.data_arrived(KEY, US, 0.0)
    assert a.send == [(KEY, US)] and a.entries[KEY].state == WINNER and a.entries[KEY].timer == 177.0
    a.send.clear()
    a.data_arrived(KEY, US, 1.0)
    assert a.send == [], "a winner does not assert at every packet"
    a.received(KEY, Metric(False, 0, 20, "10.0.0.9"), US, 2.0)  # inferior: we assert again
    assert a.send == [(KEY, US)] and a.entries[KEY].timer == 179.0
    a.send.clear()
    better = Metric(False, 0, 5, "10.0.0.1")
    a.received(KEY, better, US, 3.0)
    assert a.losing(KEY) and a.entries[KEY].winner == better and a.entries[KEY].timer == 183.0
    assert a.send == []


def test_an_assert_better_than_ours_in_noinfo_makes_us_lose_and_a_worse_one_makes_us_assert() -> None:
    a = Asserts()
    a.received(KEY, Metric(False, 0, 10, "10.0.0.9"), US, 0.0)  # the same metric, a higher address
    assert a.losing(KEY) and a.send == []
    b = Asserts()
    b.received(KEY, Metric(False, 0, 10, "10.0.0.4"), US, 0.0)
    assert b.entries[KEY].state == WINNER and b.send == [(KEY, US)]
    c = Asserts()
    c.received(KEY, Metric(False, 0, 10, "10.0.0.9"), None, 0.0)
    assert c.entries == {}, "where we do not forward there is nothing to stop"


def test_a_loser_forwards_again_when_the_winner_cancels_turns_worse_goes_quiet_or_goes() -> None:
    winner = Metric(False, 0, 10, "10.0.0.9")
    cancel = Metric(True, INFINITE_PREFERENCE, INFINITE_METRIC, "10.0.0.9")
    for end in ("cancel", "worse", "quiet", "gone"):
        a = Asserts()
        a.received(KEY, winner, US, 0.0)
        a.received(KEY, winner, US, 100.0)  # the winner's refresh
        assert a.losing(KEY) and a.entries[KEY].timer == 280.0
        if end == "cancel":
            a.received(KEY, cancel, US, 101.0)
        elif end == "worse":
            a.received(KEY, Metric(False, 0, 99, "10.0.0.9"), US, 101.0)
        elif end == "quiet":
            a.tick(279.9)
            assert a.losing(KEY)
            a.tick(280.0)
        else:
            a.neighbor_gone(3, "10.0.0.9")
        assert a.entries == {}, end
        assert a.send == [], end


def test_a_winner_reasserts_on_its_timer_and_cancels_when_it_stops_forwarding() -> None:
    a = Asserts()
    a.data_arrived(KEY, US, 0.0)
    a.send.clear()
    assert a.next_deadline() == 177.0
    a.tick(177.0)
    assert a.send == [(KEY, US)] and a.entries[KEY].timer == 354.0
    a.send.clear()
    a.could_assert_ended(KEY)
    ((key, metric),) = a.send
    assert key == KEY and metric.cancels and metric.rpt and metric.address == US.address
    assert a.entries == {} and not a.losing(KEY)

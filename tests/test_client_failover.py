"""roles/client_failover.py: the order servers are tried in, the backoff, a reloaded chain."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.roles.client_failover import RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN, ServerChain


class ServerChainTests(SynchronousTestCase):
    def test_a_pass_tries_each_server_once_then_pauses_longer_each_time(self) -> None:
        chain = ServerChain("a", None, ["b", "c"])
        chain.new_pass()
        self.assertEqual([chain.next_after(0), chain.next_after(1), chain.next_after(2)], [1, 2, None])
        pauses = [chain.pause() for _ in range(7)]
        self.assertEqual(pauses[:3], [RETRY_BACKOFF_MIN, 2 * RETRY_BACKOFF_MIN, 4 * RETRY_BACKOFF_MIN])
        self.assertEqual(pauses[-1], RETRY_BACKOFF_MAX)
        chain.qualified(2)
        self.assertEqual((chain.index, chain.current.name, chain.pause()), (2, "c", RETRY_BACKOFF_MIN))
        self.assertEqual(chain.index, 0)  # after a failed pass the next starts from the first

    def test_a_pass_started_at_a_fallback_wraps_around(self) -> None:
        chain = ServerChain("a", None, ["b"])
        chain.new_pass()
        self.assertEqual((chain.next_after(1), chain.next_after(0)), (0, None))

    def test_replaced_fallbacks_keep_what_was_resolved(self) -> None:
        chain = ServerChain("a", 7, ["b", "c"])
        chain[2].ip = 42
        chain.replace_fallbacks(["c", "d"])
        self.assertEqual([(s.name, s.ip) for s in chain.servers], [("a", None), ("c", 42), ("d", None)])
        self.assertEqual(chain[0].secondary, 7)
        chain.new_pass()
        chain.replace_fallbacks(["c"])  # shorter during a pass: the pass covers the new chain
        self.assertEqual((chain.next_after(0), chain.next_after(1)), (1, None))

"""The console's files judged once for the console and teredo-checkconf: keys list and host key place."""

from __future__ import annotations

import os

from twisted.conch.ssh import keys
from twisted.trial.unittest import SynchronousTestCase

from teredo_appliance.admin import ConsoleError, load_authorized_keys, load_or_create_host_key
from teredo_appliance.consolefiles import KeysRefused, host_key_problem, parse_authorized_keys, vet_authorized_keys
from tests.test_admin import KeyFiles, public_line
from tests.test_config import no_longer_than


class AuthorizedKeysFileTests(SynchronousTestCase):
    def test_each_line_is_judged(self) -> None:
        alice, bob = public_line("alice"), public_line("bob")
        found = parse_authorized_keys(b"# admins\n\n" + alice + b"\ngarbage\n" + b'from="x" ' + bob + b"\n" + bob)
        self.assertEqual(found.keys, (keys.Key.fromString(alice), keys.Key.fromString(bob)))
        self.assertEqual(found.ignored, ((4, "not a plain public key"), (5, "not a plain public key")))

    def test_a_private_key_pasted_in_grants_nothing(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        # One line at a time: a multi-line PEM block is never one key line.
        self.assertEqual(parse_authorized_keys(pem).keys, ())
        self.assertTrue(parse_authorized_keys(pem).ignored)

    def test_fifo_in_place_of_the_list_is_refused_without_blocking(self) -> None:
        fifo = self.mktemp()
        os.mkfifo(fifo)
        with no_longer_than(5), self.assertRaises(KeysRefused) as caught:
            vet_authorized_keys(fifo)
        self.assertEqual(str(caught.exception), f"authorized_keys file {fifo} is a FIFO, not a regular file")
        # The console re-reads the list on every reload, in the reactor thread.
        with no_longer_than(5), self.assertRaises(ConsoleError) as caught:
            load_authorized_keys(fifo)
        self.assertEqual(str(caught.exception), f"manhole: authorized_keys file {fifo} is a FIFO, not a regular file")

    def test_fifo_in_place_of_the_host_key_is_refused_without_blocking(self) -> None:
        fifo = self.mktemp()
        os.mkfifo(fifo)
        with no_longer_than(5), self.assertRaises(ConsoleError) as caught:
            load_or_create_host_key(fifo)
        self.assertEqual(str(caught.exception), f"manhole: host key {fifo} is a FIFO, not a regular file")
        self.assertEqual(host_key_problem(fifo), f"host key {fifo} is a FIFO, not a regular file")


class HostKeyPlaceTests(SynchronousTestCase):
    def test_missing_key_in_a_creatable_place_is_fine(self) -> None:
        files = KeyFiles(self)
        self.assertIsNone(host_key_problem(files.host_key))  # its directory "var" does not exist yet
        load_or_create_host_key(files.host_key)
        self.assertIsNone(host_key_problem(files.host_key))  # now a regular file

    def test_a_file_where_a_directory_should_be(self) -> None:
        blocker = os.path.abspath(self.mktemp())
        open(blocker, "w").close()
        self.assertEqual(host_key_problem(os.path.join(blocker, "a", "key")),
                         f"host key {blocker}/a/key cannot be created: {blocker} is not a directory")

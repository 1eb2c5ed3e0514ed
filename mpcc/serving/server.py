"""What every party process shares: its listener (`listener.Listener`) and control loop
(`controlloop.ControlLoop`), deployments from the owner, kernel warm-up and shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np

from mpcc.errors import MpccError, PartyError
from mpcc.runtime.warmup import warm_up
from mpcc.serving import heap, state
from mpcc.serving.config import ClusterConfig
from mpcc.serving.controllink import ControlLink
from mpcc.serving.controlloop import ControlLoop
from mpcc.serving.listener import Handler, Listener
from mpcc.serving.messages import (
    Activate,
    Commit,
    Deployed,
    DeployHead,
    ErrorReply,
    Hello,
    Share,
    Staged,
    Welcome,
)
from mpcc.serving.state import Deployment
from mpcc.serving.tlscontext import client_context

ERROR_LINGER_S = 5.0  # a refused deploy keeps reading until the owner has its error


async def _drain_until_closed(ch: ControlLink, within_s: float) -> None:
    """Read and drop what the peer still sends until it closes the link (or `within_s`).

    Closing a socket with unread data resets the connection, and the reset can destroy the
    error message sent just before it: the owner, still sending shares, would report a
    broken pipe instead of the reason. Reading on until the owner has read the error and
    hung up closes the link cleanly."""
    end = time.monotonic() + within_s
    while (left := end - time.monotonic()) > 0:
        await ch.recv(left)  # raises PartyError once the peer has closed


class PartyServer:
    """Base of the dealer and compute party processes: state, deploys, listener, stopping.

    At start the party loads (or, with an empty numba cache, compiles) its kernels in the
    background while the listener already answers; it joins no session before they are
    ready (`kernels_ready`), so no query of a session waits for a kernel to compile."""

    role: str

    def __init__(
        self,
        cfg: ClusterConfig,
        role: str,
        state_dir: Path | None = None,
        num_requests: int | None = None,
    ) -> None:
        self.cfg, self.role = cfg, role
        self.log = logging.getLogger(f"mpcc.serving.{role}")
        self.state_dir = state_dir or cfg.role_state_dir(role)
        self.num_requests = num_requests
        self.client_ctx = client_context(cfg, role)
        self.stop_event = threading.Event()
        self.deployed = threading.Condition()
        self.deploy_generation = 0
        self.last_error: str | None = None
        self.deployment: Deployment | None = None
        # The process is the party's own (`mpcc party`), not a test's or a program's that
        # embeds it: freeze what start-up left for the garbage collector once warm.
        self.owns_process = False
        self.load_error: str | None = None  # why the stored deployment was rejected
        self.kernels_ready = threading.Event()
        left = state.clean(self.state_dir)  # what a crash mid-write or mid-deploy left
        if left:
            self.log.info("removed files an interrupted deploy left: %s", ", ".join(left))
        try:
            stored = state.load(self.state_dir)  # shares checked against the commitment
            self.deployment = stored.public_part() if stored is not None else None
        except MpccError as e:
            self.load_error = str(e)
            self.log.error("ignoring the stored deployment: %s", e)
        if self.deployment:
            self.log.info(
                "loaded deployment of plan %s (%s) from %s",
                self.deployment.plan_hash[:12],
                self.deployment.prog.name,
                self.state_dir,
            )
        self.listener: Listener | None = None
        self.control: ControlLoop | None = None

    # -- to be filled by subclasses -------------------------------------------------------
    def handlers(self) -> dict[str, tuple[set[str], Handler]]:
        return {"deploy": ({"owner"}, self.on_deploy)}

    def on_new_deployment(self) -> None:
        """Called after a deployment was stored (end the current session)."""

    def shutdown(self) -> None:
        """Release the subclass's resources at stop."""

    # -- running --------------------------------------------------------------------------
    def start(self) -> None:
        """Listen and start background work (returns at once)."""
        self.control = ControlLoop(self.role, self.log)
        self.listener = Listener(self.cfg, self.role, self.handlers(), self.log, self.control)
        self.listener.start()
        host, port = self.cfg.address(self.role)
        self.log.info("%s listening on %s (TLS 1.3, mutual auth)", self.role, f"{host}:{port}")
        threading.Thread(target=self._warm_up, name="mpcc-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        """Load or compile the numba kernels, then set `kernels_ready` (also if it failed:
        the kernels then compile on first use, which is slow but correct)."""
        try:
            self.log.info("kernels ready in %s", warm_up())
            if self.owns_process:
                heap.freeze_startup_objects()
        except Exception:  # noqa: BLE001 - the party still works without the warm-up
            self.log.exception("kernel warm-up failed: kernels will compile on first use")
        finally:
            self.kernels_ready.set()

    def await_kernels(self, timeout: float) -> None:
        """Block until the kernels are ready; PartyError after `timeout` s or on stop."""
        deadline = time.monotonic() + timeout
        while not self.kernels_ready.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if self.stop_event.is_set():
                raise PartyError("stopping")
            if time.monotonic() >= deadline:
                raise PartyError(f"{self.role}'s kernels are not ready after {timeout:g} s")

    def stop(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set():
            self.log.info("stopping: %s", reason)
            self.stop_event.set()
            with self.deployed:
                self.deployed.notify_all()

    def run(self, install_signals: bool = True) -> int:
        """Serve until SIGINT/SIGTERM or the request limit; returns the exit status."""
        got: list[str] = []

        def on_signal(sig: int, _frame: object) -> None:
            got.append(signal.Signals(sig).name)  # only flag it: the loop below logs and stops
            self.stop_event.set()

        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, on_signal)
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.close(f"signal {got[0]}" if got else "stop requested")
        return 0

    def close(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set() or reason != "stop requested":
            self.log.info("stopping: %s", reason)
        self.stop_event.set()
        with self.deployed:
            self.deployed.notify_all()
        if self.listener is not None:
            self.listener.close()
        self.shutdown()
        if self.control is not None:
            self.control.close()
        self.log.info("stopped")

    # -- deployment -----------------------------------------------------------------------
    def takes_shares(self) -> bool:
        return self.role in ("p0", "p1")

    async def on_deploy(self, ch: ControlLink, hello: Hello) -> None:
        """A two-phase deploy: the owner sends the public plan and, to P0/P1, this party's
        weight shares, which are checked (the plan verified) and staged; the party answers
        "staged", and switches to them only when the owner says "activate" -- once all three
        have staged. Until then, and for good if the owner aborts or goes away, the previous
        deployment stays active and serving.

        A task of the control loop: checking, writing and switching run in its executor."""
        assert self.control is not None
        t = self.cfg.serving.setup_timeout_s
        await ch.send(Welcome(self.role))
        staged: Deployment | None = None
        try:
            staged = await self._receive_deployment(ch, t)
            await ch.send(Staged(self.role, staged.plan_hash, staged.deploy_id))
            Activate.parse((await ch.recv_msg(t, expect=Activate.KIND)).meta)
            dep = await self.control.blocking(self._activate, staged)
        except MpccError as e:
            if staged is None:
                self.log.error("deployment from %s rejected: %s", ch.peer, e)
                why = f"{self.role} rejected the deployment: {e}"
            else:
                self.log.warning(
                    "deployment %s… staged and not activated (%s): the previous one stays",
                    staged.deploy_id[:8],
                    e,
                )
                why = f"{self.role} did not activate the deployment: {e}"
                try:
                    await self.control.blocking(state.discard, self.state_dir, staged.deploy_id)
                except (OSError, MpccError) as err:
                    self.log.error("could not remove the staged deployment: %s", err)
            try:
                await ch.send(ErrorReply(why))
                await _drain_until_closed(ch, ERROR_LINGER_S)
            except PartyError:
                pass
            ch.close("deployment not activated")
            return
        self.log.info(
            "deployed plan %s (%s), deployment %s",
            dep.plan_hash[:12],
            dep.prog.name,
            dep.deploy_id[:8],
        )
        await self.control.blocking(self.on_new_deployment)
        try:
            await ch.send(Deployed(self.role, dep.plan_hash))
        finally:
            ch.close("deployment done")

    def _activate(self, staged: Deployment) -> Deployment:
        """Switch to a staged deployment (on disk, then in memory); its public part."""
        with self.deployed:
            state.activate(self.state_dir, staged.deploy_id)
            dep = staged.public_part()
            self.deployment = dep
            self.deploy_generation += 1
            self.deployed.notify_all()
        return dep

    async def _receive_deployment(self, ch: ControlLink, t: float) -> Deployment:
        """The deploy header, one message per weight share, then a commit; then checked and
        staged (in the control loop's executor)."""
        head = DeployHead.parse((await ch.recv_msg(t, expect=DeployHead.KIND)).meta)
        names = head.weights
        if self.takes_shares() != bool(names):
            raise PartyError(
                "the dealer takes the public plan only"
                if names
                else f"{self.role} needs its weight shares"
            )
        shares: dict[str, np.ndarray] = {}
        for n in names:
            msg = await ch.recv_msg(t, expect=Share.KIND)
            if Share.of(msg).name != n or len(msg.arrays) != 1:
                raise PartyError("weight shares arrived out of order")
            shares[n] = msg.arrays[0]
        Commit.parse((await ch.recv_msg(t, expect=Commit.KIND)).meta)
        assert self.control is not None
        return await self.control.blocking(self._stage, head, shares if names else None)

    def _stage(self, head: DeployHead, shares: dict[str, np.ndarray] | None) -> Deployment:
        dep = Deployment.build(  # checks the hash, verifies the plan, checks the shares
            head.plan,
            head.plan_hash,
            head.deploy_id,
            shares,
            role=self.role,
            commitments=head.commitments,
            salt=head.salt,
        )
        state.stage(self.state_dir, dep)  # written and fsynced
        # The shares stay on disk: each session reads (and checks) them afresh, so between
        # sessions a party holds its opened weights alone.
        return dep.public_part()

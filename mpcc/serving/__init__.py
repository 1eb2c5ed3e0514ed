"""Deployment and serving: P0, P1 and the dealer as separate processes over mutual TLS 1.3.

| module | idea |
|---|---|
| `config` | `cluster.toml`: addresses, credentials, `[serving]` limits |
| `certs` | the cluster CA; one EC key and certificate per role, the role pinned in the SAN |
| `wire` | length-prefixed frames with a size limit, strictly parsed |
| `tls` | `TlsChannel`, the `Channel` over TLS (same payload accounting, wire bytes apart) |
| `startup` | session id from every party's contribution; PRG known answer; share commitments |
| `state` | a party's deployed model on disk (public plan, deployment id, its shares) |
| `server` | the listener and what every party process shares (deploys, stopping) |
| `controlloop` / `controllink` | the asyncio loop serving client and deploy links, one task each |
| `linkend` | what both kinds of link end share: why it closed, close callbacks, frame limits |
| `party` / `dealer` | the compute parties and the dealer as long-running servers |
| `owner` / `client` | `mpcc deploy` and `mpcc predict` (`Client`) |
| `commands` | the argparse subcommands; `local`: three processes on 127.0.0.1 for tests |

See docs/deployment.md for the guide and the threat model.
"""

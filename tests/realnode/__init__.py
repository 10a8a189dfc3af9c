"""Real nodes on this machine: what the blueprints render, booted and run for real.

The harness (root only; `scripts/install-realnode` installs what it drives):

- `rootfs.base_root()`: a Debian 12 root with systemd, docker.io, busybox and sshd, built once
  with mmdebstrap and cached under /var/cache/blueprints-realnode (keyed by its recipe).
- `images.build_standins(app, dir)`: a stand-in image per image of the spec (busybox httpd on
  the spec's ports, health paths and health commands that a test can make fail) and the real
  Caddy under the proxy's image name, as tarballs for `docker import`.
- `net.TestNetwork(name)`: a bridge in its own network namespace, with the client side of every
  request; `add_host` gives each node a namespace whose eth0 sits on the bridge.
- `node.DataDisk(name)`: a loop device standing in for the cloud volume.
- `node.Node(name, user_data, network, disk=..., images=...)`: a systemd-nspawn container that
  boots the overlay of the root plus what cloud-init would install from the user data;
  `start`, `wait_booted`, `wait_active`, `exec`, `containers`, `diagnose` (failed units and
  their journals), `reboot`, `kill`, `hang`, `attach_volume`/`detach_volume` (hot-plug),
  `destroy`. `node.TEST_ONLY` lists every test-only bridge.
- `fake_cloud.NodeCloud(network, app=..., stack=...)`: the fake Hetzner API (FakeHcloud) whose
  actions happen to the nodes (power, the volume's loop device hot-plugged, the floating IP's
  route), served on the network's client side for a real `blueprints watch`; `HolderWatch`
  samples that at most one node holds the volume.
- `stacks.user_data(stack, suffix)`: a server's user data from the offline plan of a stack;
  `stacks.HttpsClient`: curl on the test network against a node's proxy, TLS verified.
- `light`: fixtures that need no systemd: `DockerEngine` (dockerd in a network namespace),
  `Caddy` (the real Caddy on a rendered config), `SshServer` (sshd on 127.0.0.1).
- `host.leftovers()`: every namespace, mount, loop device and process the harness may have left
  (all carry the prefix `bpt` or live under /var/tmp/blueprints-realnode); `host.sweep()`
  removes those of an earlier, interrupted run.

Everything is stopped by PID and removed by whoever created it, in `finally` blocks, so a failed
test leaves nothing behind either; tests/test_realnode_zz_leftovers.py checks it.
"""

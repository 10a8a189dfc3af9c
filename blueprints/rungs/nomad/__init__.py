"""The nomad rung: three Nomad servers and clients behind a load balancer.

- `component`: the Pulumi component (servers, volume, load balancer, the release resources);
- `bootstrap`: each node's user data (Nomad agent, gossip, ACL bootstrap, host volumes);
- `node_ready`: the script that receives a node's TLS files and admin keys over SSH and waits
  until the node has rejoined the cluster (so machine changes roll one node at a time);
- `release`: the app as Nomad jobs (one per service) and Variables, sent through Nomad's API,
  and the backups as two periodic jobs on the data node running blueprints-backup;
- `rules`: what the spec must satisfy on this rung; `failure`: how it recovers from a lost node;
- `templates/`: the HCL, systemd and shell templates.
"""

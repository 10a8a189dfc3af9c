"""The k8s rung: k3s on three control planes and three workers behind load balancers.

- `component`: the Pulumi component (servers, load balancers, the ready commands, and every
  Kubernetes object through the Kubernetes API);
- `bootstrap`: each node's user data (k3s, its configuration and unit; no secret);
- `node_ready`: the script that receives a node's token, admin keys and (on the first control
  plane, founding a cluster) the cluster's CAs over SSH, removes the stale record of the machine
  it replaces, and waits until the node is Ready again (so machine changes roll one at a time);
- `release`: the app, its backups (restic CronJobs) and the cluster add-ons as Kubernetes
  objects and Helm releases;
- `rules`: what the spec must satisfy on this rung; `failure`: how it recovers from a lost node;
- `templates/`: the k3s unit and shell templates, and the backup pods' script.
"""

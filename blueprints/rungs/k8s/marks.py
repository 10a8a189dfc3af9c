"""Names the k8s rung writes and the preview report reads (kept import-light: the report must
not load the spec models to know them)."""

# A server label (hcloud labels, AWS tags) saying what the node holds that the cluster cannot
# rebuild by itself: "etcd" on the control planes, "local-volumes" on AWS workers.
HOLDS_LABEL = "holds"
# The pod-template annotation with the keyed digest of a service's secret values.
SECRETS_DIGEST = "blueprints.dev/secrets-digest"

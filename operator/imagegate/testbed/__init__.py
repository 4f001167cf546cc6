"""The local test bed: etcd, kube-apiserver, an OCI registry, cosign and helm, from Go modules."""

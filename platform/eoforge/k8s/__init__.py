"""Kubernetes: render KubeRay RayJobs from k8s/ (kustomize) for a config, submit and follow them.

- :mod:`eoforge.k8s.render`: ``kubectl kustomize k8s/overlays/<overlay>`` -> the RayJob for one
  config (pure: no cluster needed).
- :mod:`eoforge.k8s.client`: create it with the kubernetes client (``ray.io/v1`` RayJob plus the
  ConfigMaps it mounts), read its status, stream its logs.
- :mod:`eoforge.k8s.cli`: ``eoforge k8s render|submit|status|logs``.
"""

"""The names of the guard's objects in the cluster, in one place.

The manifests create the objects under these names (`webhook.manifests`), the self-managed install's RBAC grants
access to exactly them, and the settings of `serve --self-managed`, `register` and `doctor` default to them, so the
certificate keeper only ever touches what the install made and what its role allows.
"""

NAMESPACE = "harvester-system"  # Harvester's own, where the Upgrades live; the install never creates or owns it
SERVICE = "upgrade-guard"  # also the Deployment, its ServiceAccount, and the prefix of every other name
CONFIGURATION = SERVICE  # both the ValidatingWebhookConfiguration and the MutatingWebhookConfiguration
CA_SECRET = f"{SERVICE}-ca"  # self-managed: the CA (ca.crt, ca.key)
TLS_SECRET = f"{SERVICE}-tls"  # the serving certificate: kept by the guard, or made by cert-manager or by hand

"""The mesh PKI: roots, plug-in CA bundles, workload certificates, SPIFFE IDs, chain verification."""

from meshfed.pki.authority import (
    CA_CERT,
    CA_KEY,
    CERT_CHAIN,
    PLUGIN_FILES,
    ROOT_CERT,
    CertAndKey,
    MeshPKI,
    PluginCA,
    WorkloadCert,
    create_mesh_pki,
    new_intermediate,
    new_root,
)
from meshfed.pki.bundle import (
    BundleReport,
    BundleSourceError,
    Finding,
    bundle_from_secret,
    load_bundle_dir,
    read_bundle_dir,
    validate_bundle,
)
from meshfed.pki.certs import KEY_TYPES, KeyType, PemError, cert_pem, fingerprint, load_certs
from meshfed.pki.spiffe import SpiffeId, SpiffeIdError
from meshfed.pki.verify import (
    ChainVerificationError,
    Purpose,
    VerifiedChain,
    verify_chain,
    verify_workload_chain,
)

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CERT_CHAIN",
    "KEY_TYPES",
    "PLUGIN_FILES",
    "ROOT_CERT",
    "BundleReport",
    "BundleSourceError",
    "CertAndKey",
    "ChainVerificationError",
    "Finding",
    "KeyType",
    "MeshPKI",
    "PemError",
    "PluginCA",
    "Purpose",
    "SpiffeId",
    "SpiffeIdError",
    "VerifiedChain",
    "WorkloadCert",
    "bundle_from_secret",
    "cert_pem",
    "create_mesh_pki",
    "fingerprint",
    "load_bundle_dir",
    "load_certs",
    "new_intermediate",
    "new_root",
    "read_bundle_dir",
    "validate_bundle",
    "verify_chain",
    "verify_workload_chain",
]

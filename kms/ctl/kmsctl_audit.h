/*
 * kmsctl_audit.h - `kmsctl audit ...`: the auditor's side of the audit log.
 *
 * Online (AuditService over the Twirp client of kmsctl_rpc.h, role auditor):
 *   head       the region's latest signed tree head
 *   keys       the audit public keys with their validity periods
 *   export     a range of entries, with proofs, saved as the reply bytes
 * Offline (OpenSSL only: no server, no HSM):
 *   sth-bytes  a head as the exact bytes its signature covers, and the DER
 *              signature, for `openssl dgst -sha256 -verify`
 *   verify     signatures, ordering, completeness, inclusion and consistency
 *              proofs of exported bundles, against heads kept from earlier
 *              runs in a state file
 * docs/audit.md describes the file formats and the checks. The checks
 * themselves are a library (audit_verify.h, with audit_keyset.h and
 * audit_state.h); this is only their command line.
 */
#ifndef KMSCTL_AUDIT_H
#define KMSCTL_AUDIT_H

/* argv[0] is "audit". Returns the process exit code (enum kmsctl_exit; for
 * verify, 1 means a check failed). */
int kmsctl_audit_main(int argc, char **argv);

#endif

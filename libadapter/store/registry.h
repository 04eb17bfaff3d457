/*
 * registry.h - push and pull stored adapters to and from OCI registries
 * (the OCI distribution API over HTTP(S), with libcurl).
 *
 * A registry reference is
 *     HOST[:PORT]/REPOSITORY[:TAG]      (TAG "latest" when absent)
 *     HOST[:PORT]/REPOSITORY@sha256:<64 hex>
 * HOST is a DNS name, an IPv4 address or [IPv6]; it must contain a '.' or a
 * ':' or be "localhost" (there is no default registry).  REPOSITORY is
 * lowercase path components ([a-z0-9] separated by '.', '_', '__' or '-'),
 * at most 255 characters; TAG is [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
 *
 * The requests, in order (distribution spec v1.1):
 *   push: GET /v2/ (the auth challenge); per blob HEAD /v2/R/blobs/D and,
 *         when absent, POST /v2/R/blobs/uploads/ then either PUT LOC?digest=D
 *         with the whole blob, or PATCH LOC per chunk (Content-Range) and an
 *         empty PUT LOC?digest=D; last PUT /v2/R/manifests/TAG with
 *         Content-Type application/vnd.oci.image.manifest.v1+json.
 *   pull: GET /v2/; GET /v2/R/manifests/TAG (Accept: the OCI manifest type);
 *         GET /v2/R/blobs/D for each blob the store lacks, streamed into the
 *         store's work folder while its size and sha256 are checked (a body
 *         longer than the descriptor stops the transfer; Content-Length is
 *         never trusted); then the artifact is verified and committed in one
 *         store transaction (store.h: lora_store_stage_commit).
 *
 * Authentication as container tools do it: anonymous first; on 401 the
 * WWW-Authenticate challenge decides: Basic sends the credentials of the
 * host; Bearer asks the challenge's realm for a token (GET realm?service=
 * &scope=repository:R:pull[,push], with the credentials as Basic when there
 * are any) and sends "Authorization: Bearer <token>".  Credentials come from a
 * Docker config.json the caller names ("auths": {HOST: {"auth": base64
 * "user:password"}}, or "username"/"password"); they are never put in an error
 * message and are wiped after use.
 *
 * Transport: https with certificate checks; plain http only with
 * opts.insecure, or for a loopback host (localhost, 127.0.0.0/8, [::1]),
 * which is tried over https first.  Credentials are not sent to a plain-http
 * realm of a non-loopback host unless insecure.
 *
 * Errors name the registry ("registry 127.0.0.1:5000: ..."); a digest or
 * size that does not match, or a package that fails verification, is
 * LORA_EVERIFY (exit 3).
 */
#ifndef LORA_REGISTRY_H
#define LORA_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "libadapter/store/store.h"

#define LORA_OCI_MANIFEST_TYPE "application/vnd.oci.image.manifest.v1+json"

struct lora_registry_ref {
	char host[262];              /* "host[:port]" as given (IPv6 in brackets) */
	char repo[256];
	char tag[129];               /* "" when by digest */
	char digest[72];             /* "sha256:<hex>" or "" when by tag */
	int loopback;                /* host is localhost, 127.0.0.0/8 or ::1 */
};
/* Parse HOST[:PORT]/REPO[:TAG|@sha256:HEX]; LORA_EUSAGE saying what is wrong. */
int lora_registry_ref_parse(const char *s, struct lora_registry_ref *out, struct lora_err *err);

/* One parsed WWW-Authenticate challenge. */
struct lora_auth_challenge {
	char scheme[16];             /* "basic" or "bearer" (lowercased); "" when none parsed */
	char realm[1024];
	char service[256];
	char scope[512];
	char error[64];              /* e.g. "insufficient_scope" */
};
/*
 * Parse a WWW-Authenticate header value such as
 *   Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"
 * (quoted strings with \-escapes, or tokens; any order; unknown keys ignored).
 * Returns 0, or -1 when it is not a challenge.
 */
int lora_auth_challenge_parse(const char *value, struct lora_auth_challenge *out);

struct lora_registry_opts {
	int insecure;                /* plain http to any host (and no certificate checks) */
	const char *docker_config;   /* path of a config.json to take credentials from, or NULL */
	uint64_t chunk_size;         /* blobs larger than this go up in PATCH chunks of it; 0: 64 MiB */
	long timeout_s;              /* give up when a transfer stalls this long; 0: 60 */
	/* bytes moved so far of the total to move (may be NULL) */
	void (*progress)(void *ctx, double done, double total);
	void *progress_ctx;
};

struct lora_push_result {
	char ref[LORA_REF_MAX];      /* the stored adapter pushed */
	char digest[72];             /* its digest (= the manifest digest in the registry) */
	size_t n_blobs;              /* blobs the artifact has */
	size_t n_uploaded;           /* blobs this push uploaded (the rest the registry had) */
	uint64_t bytes_uploaded;
};
/* Push the stored adapter spec (REF) to dest (a registry reference). */
int lora_registry_push(const char *store_dir, const char *spec, const char *dest,
		       const struct lora_registry_opts *opts, struct lora_push_result *res, struct lora_err *err);

struct lora_pull_result {
	char ref[LORA_REF_MAX];      /* the name it was stored as */
	char digest[72];             /* the manifest digest (registry and store alike) */
	size_t n_blobs;
	size_t n_downloaded;         /* blobs fetched (the rest the store had) */
	uint64_t bytes_downloaded;
};
/*
 * Pull src into the store as name (NAME[:TAG]; NULL: the last component of
 * the repository and the reference's tag, or for a digest reference the
 * manifest's NAME:TAG).  allow_untrusted as in lora_store_import_package.
 */
int lora_registry_pull(const char *store_dir, const char *src, const char *name, int allow_untrusted,
		       const struct lora_registry_opts *opts, struct lora_pull_result *res, struct lora_err *err);

#endif

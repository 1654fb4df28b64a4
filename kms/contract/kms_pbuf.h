/*
 * kms_pbuf.h - bounded decoding of untrusted protobuf bodies.
 *
 * protobuf-c decodes whatever it is given: a 4 MiB body of empty map
 * entries or empty sub-messages becomes millions of small allocations (each
 * ~40 bytes of struct for 2 bytes of wire), and a recursive schema could nest
 * until the stack ends. Every request body is therefore decoded through
 * kms_pbuf_unpack, which
 *
 *   1. walks the wire format against the descriptor first, allocating
 *      nothing, and refuses nesting deeper than KMS_PBUF_MAX_DEPTH, more than
 *      KMS_PBUF_MAX_REPEATED elements of one repeated field (packed or not)
 *      or unknown fields in one message, and anything malformed at the wire
 *      level (truncated varints or lengths, groups, wire types that do not
 *      match the field); and refuses any string field, at any depth
 *      (map keys and values, repeated strings, strings in nested
 *      messages), that contains a NUL byte or is not valid UTF-8:
 *      protobuf-c hands handlers a NUL-terminated char *, so such a string
 *      would reach them cut short ("alice\0mallory" read as "alice"), and
 *      proto3 requires strings to be UTF-8. Bytes fields may hold anything;
 *      and refuses any enum field, at any depth (singular, repeated,
 *      packed), whose value its enum descriptor does not define, the
 *      whole varint compared (protobuf-c would keep an unknown value, and
 *      keep only the low 32 bits of a longer one); and any uint32, int32
 *      or sint32 field, at any depth (map values and packed runs
 *      included), whose whole varint is not a value of its type (2^32+1
 *      as a uint32 would otherwise be read as 1); and any varint with
 *      bits past the 64th;
 *   2. then unpacks with an allocator that counts bytes and refuses any
 *      allocation past KMS_PBUF_ALLOC_BUDGET(len) before calling malloc.
 *
 * The allocator is malloc/free underneath, so the message may be freed as
 * usual with <type>__free_unpacked(msg, NULL); a request is freed with
 * kms_pbuf_free_wiped, which wipes it first.
 *
 * Thread-safety: reentrant; the refusal reason is per thread.
 */
#ifndef KMS_PBUF_H
#define KMS_PBUF_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "kms_error.h"

/* The schema nests 3 deep today (ExportAuditLogResponse > AuditEntry >
 * bytes); 8 leaves room without allowing a stack-eating recursion. */
#define KMS_PBUF_MAX_DEPTH 8
/* Per message instance: elements of one repeated field, and unknown fields.
 * The largest legitimate list is a 64-pair encryption context. */
#define KMS_PBUF_MAX_REPEATED 1024
/* Bytes the decoder may allocate for a body of len bytes: the body's own
 * size twice over (strings and bytes are copied) plus room for structs. */
#define KMS_PBUF_ALLOC_BUDGET(len) ((size_t)(len) * 2 + (size_t)256 * 1024)

/* Opaque fields: a top-level string field whose handler answers every
 * refusal of its value alike (RedeemLinkTokenRequest.token: a link token's
 * refusals must not tell which part was wrong). A NUL byte or invalid
 * UTF-8 in one is not refused by the decoder; the handler gets the string
 * KMS_PBUF_FLAW_NUL or KMS_PBUF_FLAW_UTF8 instead. Both are invalid UTF-8,
 * so no value the decoder lets through can equal them. */
#define KMS_PBUF_FLAW_NUL "\xff"
#define KMS_PBUF_FLAW_UTF8 "\xfe"

/* Decode len bytes of data as a desc message, or return NULL (malformed or
 * over a limit; kms_pbuf_last_refusal says which). */
void *kms_pbuf_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len);

/* Only the wire walk of step 1: KMS_OK, KMS_ERR_INVALID_ARGUMENT for a
 * string field (but an opaque one, above) with a NUL byte or not UTF-8,
 * or an enum field with a value
 * its enum does not define (the detail names the field, never its value),
 * or KMS_ERR_MALFORMED with a detail. */
kms_err kms_pbuf_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len);

/* Why the last kms_pbuf_unpack of this thread refused, as ": <reason>", or
 * "" when it did not (or protobuf-c itself refused). Static per-thread
 * storage, valid until the next call on this thread. */
const char *kms_pbuf_last_refusal(void);

/* The error a handler returns when kms_pbuf_unpack of a what message
 * ("EncryptRequest") gave NULL on this thread, with its detail set:
 * KMS_ERR_INVALID_ARGUMENT 'field "key_id" contains a NUL byte' for a
 * refused string, else KMS_ERR_MALFORMED 'the body is not a valid what
 * message: <reason>'. */
kms_err kms_pbuf_refused(const char *what);

/* The size of one element of a repeated field of type t, as protobuf-c
 * lays its arrays out. */
size_t kms_pbuf_elem_size(ProtobufCType t);

/* Wipe (OPENSSL_cleanse) every string and bytes field of m, at any depth:
 * singular, repeated, in nested messages and map entries, the set member
 * of a oneof. Lengths and counts are kept, so the message can still be
 * freed. Walks m's own descriptor; m must be a decoded message (strings
 * NUL-terminated, depth bounded by kms_pbuf_unpack). */
void kms_pbuf_wipe(ProtobufCMessage *m);

/* kms_pbuf_wipe, then free m (malloc'd, as kms_pbuf_unpack makes it).
 * NULL is a no-op. The fronts free every request through here, once, so
 * that no handler has to remember which fields held a secret. */
void kms_pbuf_free_wiped(ProtobufCMessage *m);

#endif

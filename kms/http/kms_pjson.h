/*
 * kms_pjson.h - the proto3 JSON mapping of Twirp's application/json
 * encoding, as a translation to and from protobuf wire bytes.
 *
 * A JSON request body is converted into the protobuf wire encoding of the
 * route's request message by walking its descriptor; those bytes then take
 * the protobuf path unchanged (kms_pbuf's bounded decoder, the handler's
 * own validation), so a JSON request meets exactly the limits and checks
 * of a protobuf one. A reply goes the other way: the handler's packed
 * response is unpacked with the route's response descriptor and rendered.
 *
 * The mapping (https://protobuf.dev/programming-guides/json/):
 *   - field names: the original proto name ("key_id") or its lowerCamelCase
 *     json_name ("keyId") on input, one spelling per field; replies use the
 *     original names and list every field, defaults included, as Twirp v7's
 *     Go server does (UseProtoNames, EmitUnpopulated); an unset message
 *     field is null;
 *   - int64, uint64, fixed64 (and sint/sfixed64) as decimal strings; on
 *     input a JSON number or a decimal string;
 *   - 32-bit integers as numbers; on input also decimal strings; an integral
 *     number written with a fraction or exponent (2.0, 1e3) is accepted up to
 *     2^53, a fraction or a value out of the type's range is refused;
 *   - bool as true/false; enums by value name (or the number on input);
 *   - bytes as standard base64 with padding; on input standard or URL-safe
 *     alphabet, with or without padding;
 *   - repeated fields as arrays, map<string, string> as objects, messages as
 *     objects, null as the field's default.
 * Unknown field names (Twirp's Go server discards them; here a misspelt
 * encryption_context would silently mean none), a field given twice (also under both spellings),
 * duplicate object keys, wrong JSON types, trailing bytes after the object,
 * invalid UTF-8 are refused with KMS_ERR_MALFORMED and a message naming the
 * field (never its value: the detail goes to the log and the audit event).
 * float/double, oneof and proto2 labels are not in Custos's schema and are
 * refused as KMS_ERR_INTERNAL (tests/unit/test_kms_pjson.c walks every
 * route so that a schema change adding one is noticed).
 *
 * Thread-safety: reentrant.
 */
#ifndef KMS_PJSON_H
#define KMS_PJSON_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "kms_error.h"
#include "kms_pbuf.h"
#include "kms_pjson_lex.h" /* the limits */

/* Convert len bytes of JSON into the protobuf wire encoding of a desc
 * message. The output is malloc'd into *out (never NULL on success, even
 * for an empty message); the caller wipes it (it may hold plaintext) and
 * frees it. More than max_wire bytes of output is KMS_ERR_TOO_LARGE.
 * Intermediate copies (the parsed tree, decoded bytes) are wiped. */
kms_err kms_pjson_to_wire(const ProtobufCMessageDescriptor *desc, const uint8_t *json,
                          size_t len, size_t max_wire, uint8_t **out, size_t *out_len);

/* Render the wire bytes of a desc message (a handler's reply) as proto3
 * JSON: malloc'd, NUL-terminated text in *out, its length in *out_len. The
 * unpacked message and every buffer grown on the way are wiped; the caller
 * wipes *out when the reply is secret. Rendering runs after the handler has
 * committed its change, so stored data never makes it fail: a string that
 * is not UTF-8 (JSON cannot carry it) is rendered with U+FFFD for each
 * maximal ill-formed subpart. What is left: out of memory (KMS_ERR_NOMEM),
 * and bytes that are not a desc message or a schema JSON has no mapping
 * for here (KMS_ERR_INTERNAL: a bug, or memory again inside protobuf-c). */
kms_err kms_pjson_from_wire(const ProtobufCMessageDescriptor *desc, const uint8_t *wire,
                            size_t len, char **out, size_t *out_len);

#endif

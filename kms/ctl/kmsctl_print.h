/*
 * kmsctl_print.h - what kmsctl prints in more than one place: strings from
 * the server made safe for a terminal, times and enum names, JSON output,
 * and the records the commands show (key metadata, recoveries, audit tree
 * heads), as text and as JSON.
 *
 * Every string that came from the server goes through kmsctl_print_safe (or
 * a JSON string, which is escaped to ASCII on output) before it reaches a
 * terminal. Printers write to stdout; failures print their own message to
 * stderr and return an exit code (enum kmsctl_exit).
 */
#ifndef KMSCTL_PRINT_H
#define KMSCTL_PRINT_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/* Write s to f with control and non-ASCII bytes escaped (\xNN): strings from
 * the server must not be able to drive the terminal. */
void kmsctl_print_safe(FILE *f, const char *s);

/* Name of an enum value from a reply ("ENABLED"), "UNKNOWN" if the server
 * sent a value this build does not know. */
const char *kmsctl_enum_name(const ProtobufCEnumDescriptor *d, int v);

/* Unix seconds as UTC ISO 8601 into buf ("@<seconds>" if out of range). */
const char *kmsctl_iso8601(int64_t t, char buf[32]);

/* t as kmsctl_iso8601, "-" for 0 (not set). */
const char *kmsctl_when(int64_t t, char buf[32]);

/* Multi-line text from the server, each line escaped on its own. */
void kmsctl_print_lines(FILE *f, const char *s);

/* A JSON string of s ("" for NULL). json_string refuses invalid UTF-8; the
 * server should never send it, but a lossy copy beats dropping the field:
 * kmsctl_jstr turns bytes >= 0x80 into '?', kmsctl_jstr_escaped writes them
 * as \xNN (the audit commands' form, which keeps them tellable apart). */
json_t *kmsctl_jstr(const char *s);
json_t *kmsctl_jstr_escaped(const char *s);

/* Print j indented, ASCII only (safe on any terminal, still valid JSON),
 * with a newline, and json_decref it. NULL (out of memory) is an error. */
int kmsctl_print_json(json_t *j);

/* "name: value", value escaped. */
void kmsctl_print_field(const char *name, const char *value);

/* Key metadata (custos.v1.KeyMetadata): the summary, whose first line is
 * "key_id: <id>" so scripts may sed it; its JSON object (the caller's to
 * json_decref; times as UTC ISO 8601 strings); and one row of `key list`'s
 * table under kmsctl_print_key_header. */
struct Custos__V1__KeyMetadata;
void kmsctl_print_key_text(const struct Custos__V1__KeyMetadata *k);
json_t *kmsctl_key_json(const struct Custos__V1__KeyMetadata *k);
void kmsctl_print_key_header(void);
void kmsctl_print_key_row(const struct Custos__V1__KeyMetadata *k);

/* A recovery (custos.v1.Recovery), with its canonical statement (what
 * approvers sign) when with_statement. */
struct Custos__V1__Recovery;
void kmsctl_print_recovery(const struct Custos__V1__Recovery *r, int with_statement);

/* An audit signed tree head (custos.v1.SignedTreeHead), as text and JSON. */
struct Custos__V1__SignedTreeHead;
void kmsctl_print_head_text(const struct Custos__V1__SignedTreeHead *h);
json_t *kmsctl_head_json(const struct Custos__V1__SignedTreeHead *h);

#endif

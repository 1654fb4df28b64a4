/*
 * kms_b64.h - Base64 digits (RFC 4648), the one table for every decoder:
 * the JSON mapping's bytes fields, the XKS API's fields and link tokens.
 * Each decoder keeps its own rules (padding, which alphabet it takes,
 * canonical form); they share what a digit is worth.
 */
#ifndef KMS_B64_H
#define KMS_B64_H

/* Alphabets: the standard one ('+' '/', RFC 4648 section 4) and the URL-
 * and file-name-safe one ('-' '_', section 5). */
#define KMS_B64_STD 1u
#define KMS_B64_URL 2u

/* The value 0..63 of digit c in one of the alphabets named by `accept`,
 * or -1 (padding '=' included). When used is not NULL, the alphabet a
 * '+' '/' '-' or '_' belongs to is or'ed into *used. */
int kms_b64_digit(unsigned char c, unsigned accept, unsigned *used);

#endif

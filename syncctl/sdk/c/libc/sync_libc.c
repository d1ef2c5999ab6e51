/* The few libc functions a freestanding C guest may call (see string.h beside this file). memcpy, memmove
 * and memset become the bulk-memory instructions memory.copy and memory.fill. */
#include "string.h"

void *memcpy(void *dest, const void *src, size_t n) { __builtin_memmove(dest, src, n); return dest; }
void *memmove(void *dest, const void *src, size_t n) { __builtin_memmove(dest, src, n); return dest; }
void *memset(void *dest, int c, size_t n) { __builtin_memset(dest, c, n); return dest; }

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++) if (x[i] != y[i]) return x[i] - y[i];
    return 0;
}

void *memchr(const void *s, int c, size_t n) {
    const unsigned char *p = s;
    for (size_t i = 0; i < n; i++) if (p[i] == (unsigned char)c) return (void *)(p + i);
    return 0;
}

size_t strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

int strcmp(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n) {
    for (; n && *a && *a == *b; n--) a++, b++;
    return n ? (unsigned char)*a - (unsigned char)*b : 0;
}

char *strchr(const char *s, int c) {
    for (;; s++) {
        if (*s == (char)c) return (char *)s;
        if (!*s) return 0;
    }
}

char *strstr(const char *haystack, const char *needle) {
    size_t n = strlen(needle);
    for (; *haystack; haystack++) if (!strncmp(haystack, needle, n)) return (char *)haystack;
    return n ? 0 : (char *)haystack;
}

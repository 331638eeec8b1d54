/* bts's Valgrind tool: the per-thread rings (DS-like circular buffers),
   the numbered branch sites their records name, and the cursor the
   generated code writes through. The record format is in bts.h. */

#include "bts.h"

Site *bts_sites;
Buf *bts_bufs;
ULong bts_ring_mask;
/* What a 64 KiB BTS buffer and the kernel's 10 KiB of slack hold, in
   24-byte records (bts passes its own --buffer-size's worth). */
Long bts_records_per_thread = 2730 + 426;
Buf *bts_retired;
UInt bts_nretired;
ThreadId bts_cursor_tid;
static ULong keep; /* records a ring keeps: --bts-records, at least 1, at most MAX_RECORDS */

static UInt nsites, sites_cap;
static UInt *site_set;
static UWord site_set_mask;

static UWord site_hash(Addr from, Addr to)
{
   ULong h = (from ^ (to * 0xC2B2AE3D27D4EB4FULL)) * 0x9E3779B97F4A7C15ULL;
   return h ^ (h >> 32); /* the masks take the low bits: mix the high ones in */
}

static void site_set_add(UInt id)
{
   UWord h = site_hash(bts_sites[id].from, bts_sites[id].to);
   while (site_set[h & site_set_mask]) h++;
   site_set[h & site_set_mask] = id + 1;
}

Long bts_site_number(Addr from, Addr to)
{
   if (2 * (nsites + 1) > site_set_mask) {
      UWord size = site_set_mask ? 2 * (site_set_mask + 1) : 4096;
      VG_(free)(site_set);
      site_set = VG_(calloc)("bts.sites", size, sizeof *site_set);
      site_set_mask = size - 1;
      for (UInt k = 0; k < nsites; k++) site_set_add(k);
   }
   for (UWord h = site_hash(from, to);; h++) {
      UInt id = site_set[h & site_set_mask];
      if (!id) break;
      if (bts_sites[id - 1].from == from && bts_sites[id - 1].to == to) return id - 1;
   }
   if (nsites >= MAX_SITES) return -1;
   if (nsites == sites_cap) {
      sites_cap = sites_cap ? 2 * sites_cap : 4096;
      bts_sites = VG_(realloc)("bts.sites", bts_sites, sites_cap * sizeof *bts_sites);
   }
   bts_sites[nsites].from = from;
   bts_sites[nsites].to = to;
   site_set_add(nsites);
   return nsites++;
}

UInt bts_record_at(const Buf *b, ULong n, ULong w[3])
{
   const ULong *tag = &b->base[n & bts_ring_mask];
   ULong t = *tag;
   UInt len = t >= ESCAPE                                ? 2
              : t == RAW                                 ? 3
              : t >= ISITE && t < ISITE + MAX_SITES      ? 2
              : t >= SITE && t < SITE + MAX_SITES        ? 1
                                                         : 0;
   for (UInt j = 0; j < len; j++) w[j] = tag[(Long)j - (Long)(len - 1)];
   return len;
}

Buf *bts_buf_of(ThreadId tid)
{
   Buf *b = &bts_bufs[tid];
   if (!b->base) {
      b->max = keep;
      b->base = (ULong *)VG_(calloc)("bts.buf", bts_ring_mask + 1 + 2, sizeof(ULong)) + 2;
   }
   return b;
}

void bts_cursor_load(ThreadId tid)
{
   Buf *b = bts_buf_of(tid);
   /* The index starts below the ring's size, so its low 40 bits never
      carry into the extra count before stop_client folds it. */
   Cursor c = { b->words & bts_ring_mask, b->base };
   VG_(set_shadow_regs_area)(tid, 1, CURSOR_OFFSET, sizeof c, (const UChar *)&c);
   bts_cursor_tid = tid;
}

void bts_cursor_store(void)
{
   if (!bts_cursor_tid) return;
   Cursor c;
   VG_(get_shadow_regs_area)(bts_cursor_tid, (UChar *)&c, 1, CURSOR_OFFSET, sizeof c);
   Buf *b = &bts_bufs[bts_cursor_tid];
   b->words += (c.index & LOW40) - (b->words & bts_ring_mask);
   b->extra += c.index >> 40;
   bts_cursor_tid = 0;
}

/* A record written from C: outside client code, or in a signal taken in
   the middle of it (then the cursor is the truth: it is put back first,
   and loaded again after). */
void bts_push(ThreadId tid, ULong from, ULong to, ULong flags)
{
   Bool live = tid == bts_cursor_tid;
   if (live) bts_cursor_store();
   Buf *b = bts_buf_of(tid);
   ULong w[3] = { from, to, RAW };
   UInt len = 3;
   if (from >= ESCAPE) {
      w[0] = (to << 32) | (flags & 0xffffffffULL);
      w[1] = from;
      len = 2;
      b->contexts++;
   }
   ULong *tag = &b->base[(b->words + len) & bts_ring_mask];
   for (UInt j = 0; j < len; j++) tag[(Long)j - (Long)(len - 1)] = w[j];
   b->words += len;
   b->extra += len - 1;
   if (live) bts_cursor_load(tid);
}

void bts_ring_init(void)
{
   bts_bufs = VG_(calloc)("bts.bufs", VG_N_THREADS, sizeof(Buf));
   keep = bts_records_per_thread > 0 ? (ULong)bts_records_per_thread : 1;
   if (keep > MAX_RECORDS) keep = MAX_RECORDS;
   /* Room for the records kept at 1.25 words each (a direct branch is
      one, an indirect one two), and for the longest record past the index
      (written before its exit is decided). */
   ULong words = 16;
   while (words < keep + keep / 4 + LONGEST) words <<= 1;
   bts_ring_mask = words - 1;
   tl_assert(bts_ring_mask < LOW40 / 2);
}

void bts_retire(ThreadId tid)
{
   Buf *b = &bts_bufs[tid];
   if (!b->base) return;
   bts_retired = VG_(realloc)("bts.retired", bts_retired, (bts_nretired + 1) * sizeof *bts_retired);
   bts_retired[bts_nretired++] = *b;
   VG_(memset)(b, 0, sizeof *b);
}

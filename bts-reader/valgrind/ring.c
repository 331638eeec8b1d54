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
Long bts_site_base;
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
      if (bts_sites[id - 1].from == from && bts_sites[id - 1].to == to) return bts_site_base + id - 1;
   }
   if (bts_site_base + nsites >= MAX_SITES) return -1;
   if (nsites == sites_cap) {
      sites_cap = sites_cap ? 2 * sites_cap : 4096;
      bts_sites = VG_(realloc)("bts.sites", bts_sites, sites_cap * sizeof *bts_sites);
   }
   bts_sites[nsites].from = from;
   bts_sites[nsites].to = to;
   site_set_add(nsites);
   return bts_site_base + nsites++;
}

/* A 32-bit pair of slots, tag high, as an 8-byte store writes it: sign
   extended, so that the generated code stores it as an immediate. */
static ULong tag_pair(UInt tag, ULong site)
{
   return (ULong)(Long)(Int)(((tag | (UInt)(site >> 16)) << 16) | (UInt)(site & 0xffff));
}

Layout bts_branch_layout(Long site, Bool indirect, Addr from)
{
   if (site < 0)
      return (Layout){ 9, 3, { { -8, False, from }, { -4, True, 0 }, { 0, False, TAG_RAW } } };
   if (indirect)
      return (Layout){ 6, 2, { { -5, True, 0 }, { -1, False, tag_pair(TAG_INDIRECT, site) } } };
   if (site < TAG_LONG) return (Layout){ 1, 1, { { 0, False, (ULong)site } } };
   return (Layout){ 2, 1, { { -1, False, tag_pair(TAG_LONG, site) } } };
}

/* A context record of kind k (from = ESCAPE | k) and its payload. */
static Layout context_layout(ULong from, ULong payload)
{
   return (Layout){ 5, 2, { { -4, False, payload }, { 0, False, TAG_ESCAPE | (from & 0xf) } } };
}

static ULong read8(const Slot *p)
{
   ULong v;
   VG_(memcpy)(&v, p, sizeof v);
   return v;
}

UInt bts_record_at(const Buf *b, ULong n, Record *r)
{
   const Slot *tag = &b->base[n & bts_ring_mask];
   UInt t = *tag;
   ULong site = 0;
   UInt len = 0;
   if (t < TAG_LONG) {
      site = t;
      len = 1;
   } else if (t < TAG_INDIRECT) {
      site = (ULong)(t & 0x3fff) << 16 | tag[-1];
      len = 2;
   } else if (t < TAG_RAW) {
      site = (ULong)(t & 0x1fff) << 16 | tag[-1];
      len = 6;
   } else if (t == TAG_RAW) {
      r->from = read8(tag - 8);
      r->to = read8(tag - 4);
      return 9;
   } else if ((t & 0xfff0) == TAG_ESCAPE) {
      r->from = ESCAPE | (t & 0xf);
      r->to = read8(tag - 4);
      return 5;
   }
   if (len == 0 || site < (ULong)bts_site_base || site - bts_site_base >= nsites) return 0;
   const Site *s = &bts_sites[site - bts_site_base];
   r->from = s->from;
   r->to = len == 6 ? read8(tag - 5) : s->to;
   return len;
}

Buf *bts_buf_of(ThreadId tid)
{
   Buf *b = &bts_bufs[tid];
   if (!b->base) {
      b->max = keep;
      /* Room below for a record's spill, past the end for a tag's scratch. */
      Slot *ring = VG_(calloc)("bts.buf", bts_ring_mask + 1 + (LONGEST - 1) + SCRATCH, sizeof(Slot));
      b->base = ring + LONGEST - 1;
   }
   return b;
}

void bts_cursor_load(ThreadId tid)
{
   Buf *b = bts_buf_of(tid);
   /* The index starts below the ring's size, so its low 30 bits never
      carry into the extra count before stop_client folds it. */
   Cursor c = { b->slots & bts_ring_mask, b->base };
   VG_(set_shadow_regs_area)(tid, 1, CURSOR_OFFSET, sizeof c, (const UChar *)&c);
   bts_cursor_tid = tid;
}

void bts_cursor_store(void)
{
   if (!bts_cursor_tid) return;
   Cursor c;
   VG_(get_shadow_regs_area)(bts_cursor_tid, (UChar *)&c, 1, CURSOR_OFFSET, sizeof c);
   Buf *b = &bts_bufs[bts_cursor_tid];
   b->slots += (c.index & LOW) - (b->slots & bts_ring_mask);
   b->extra += c.index >> 30;
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
   Layout l;
   if (from >= ESCAPE) {
      l = context_layout(from, (to << 32) | (flags & 0xffffffffULL));
      b->contexts++;
   } else {
      l = bts_branch_layout(-1, False, from);
   }
   Slot *tag = &b->base[(b->slots + l.len) & bts_ring_mask];
   for (UInt k = 0; k < l.nstores; k++) {
      ULong v = l.store[k].is_to ? to : l.store[k].value;
      VG_(memcpy)(tag + l.store[k].at, &v, sizeof v);
   }
   b->slots += l.len;
   b->extra += l.len - 1;
   if (live) bts_cursor_load(tid);
}

void bts_ring_init(void)
{
   bts_bufs = VG_(calloc)("bts.bufs", VG_N_THREADS, sizeof(Buf));
   keep = bts_records_per_thread > 0 ? (ULong)bts_records_per_thread : 1;
   if (keep > MAX_RECORDS) keep = MAX_RECORDS;
   /* Room for the records kept at 2.5 slots each (a direct branch is one
      or two, an indirect one six), and for the longest record past the
      index (written before its exit is decided) with its scratch. */
   ULong slots = 32; /* so that the window holds a record of any length */
   while (slots < keep * 2 + keep / 2 + LONGEST + SCRATCH) slots <<= 1;
   bts_ring_mask = slots - 1;
   tl_assert(bts_ring_mask < (1ULL << 28));
}

void bts_retire(ThreadId tid)
{
   Buf *b = &bts_bufs[tid];
   if (!b->base) return;
   bts_retired = VG_(realloc)("bts.retired", bts_retired, (bts_nretired + 1) * sizeof *bts_retired);
   bts_retired[bts_nretired++] = *b;
   VG_(memset)(b, 0, sizeof *b);
}

# slabcache/stats.pxi -- introspection: counters summed over shards, and the static geometry.
#
# Owns: stats_dict (what SlabCache.stats() returns) and layout_dict (SlabCache.layout()).
# Invariants: counters are read under each shard's lock in turn, so each shard's numbers are consistent
# with each other but shards are read at slightly different moments; bytes_used = fixed metadata + the
# slots of live objects + those of dead pinned ones (pins.pxi); metadata_bytes = fixed + per-object
# (headers, tenant, tags, chain tables and chunk headers); slack = slot bytes neither data nor metadata.

cdef dict stats_dict(header_t *h):
    """Counters summed over all shards (all processes), plus fill per size class."""
    cdef sctx c
    cdef uint32_t i, k
    cdef uint64_t tot[18]
    cdef uint64_t cls_pages[MAX_CLASSES]
    cdef uint64_t cls_used[MAX_CLASSES]
    cdef class_state *cs
    memset(tot, 0, sizeof(tot))
    memset(cls_pages, 0, sizeof(cls_pages))
    memset(cls_used, 0, sizeof(cls_used))
    for i in range(h.nshards):
        ctx_init(&c, h, i)
        if shard_lock(&c):
            raise CacheError("shard lock unrecoverable")
        tot[0] += c.sh.items
        tot[1] += c.sh.data_bytes
        tot[2] += c.sh.extra_bytes
        tot[3] += c.sh.slot_bytes
        tot[4] += c.sh.hits
        tot[5] += c.sh.misses
        tot[6] += c.sh.evictions
        tot[7] += c.sh.expirations
        tot[8] += c.sh.stores
        tot[9] += c.sh.purged
        tot[10] += c.sh.deletes
        tot[11] += c.sh.refused
        tot[12] += c.sh.steals
        tot[13] += c.sh.recoveries
        tot[14] += c.sh.npins
        tot[15] += c.sh.pinned_bytes
        tot[16] += c.sh.dead_items
        tot[17] += c.sh.dead_bytes
        for k in range(h.nclasses):
            cs = &c.sh.classes[k]
            cls_pages[k] += cs.npages
            cls_used[k] += cs.nsmall + cs.nmain
        shard_unlock(&c)
    classes = []
    for k in range(h.nclasses):
        classes.append({"size": h.class_size[k], "pages": cls_pages[k],
                        "slots": cls_pages[k] * h.class_per_page[k], "used": cls_used[k]})
    live_meta = tot[0] * HDR_SIZE + tot[2]
    return {
        "items": tot[0],
        "capacity_bytes": h.capacity,
        "bytes_used": h.fixed_meta + tot[3] + tot[17],
        "data_bytes": tot[1],
        "metadata_bytes": h.fixed_meta + live_meta,
        "fixed_metadata_bytes": h.fixed_meta,
        "object_metadata_bytes": live_meta,
        "slack_bytes": tot[3] - tot[1] - live_meta,
        "hits": tot[4],
        "misses": tot[5],
        "evictions": tot[6],
        "expirations": tot[7],
        "stores": tot[8],
        "purged": tot[9],
        "deletes": tot[10],
        "refused": tot[11],
        "page_steals": tot[12],
        "lock_recoveries": tot[13],
        "pins": tot[14],
        "pinned_bytes": tot[15],
        "pinned_dead_items": tot[16],
        "pinned_dead_bytes": tot[17],
        "shards": h.nshards,
        "page_size": h.page_size,
        "pages": shard_at(h, 0).npages * h.nshards,
        "max_object_size": h.max_object,
        "classes": classes,
    }

cdef dict layout_dict(header_t *h):
    """Static geometry: shards, pages, buckets, class sizes."""
    cdef shard_t *sh = shard_at(h, 0)
    return {
        "mapping_size": h.mapping_size, "shards": h.nshards, "page_size": h.page_size,
        "pages_per_shard": sh.npages, "buckets_per_shard": sh.nbuckets, "max_items_per_shard": sh.max_items,
        "header_bytes": h.shards_off, "shard_stride": h.shard_stride, "fixed_metadata_bytes": h.fixed_meta,
        "slot_header_bytes": HDR_SIZE,
        "class_sizes": [h.class_size[k] for k in range(h.nclasses)],
    }

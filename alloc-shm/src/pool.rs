//! [`Pool`]: a heap in a named shared-memory file, usable from any process that attaches it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloc_core::{
    AllocId, AllocOptions, Allocation, Budget, BudgetUsed, Heap, Owner, RecordState, Repaired, Session,
    Stats, Uncharged, Wake,
};

use crate::descriptor::{self, AllocDescriptor, Location, PoolDescriptor};
use crate::error::{PoolError, Result};
use crate::futex::{self, FutexWait};
use crate::name;
use crate::passing;
use crate::process::{current_identity, liveness, record_is_dead, Liveness};
use crate::segment::{self, Access, Mapping};

/// How a pool is created or attached.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Permissions of a new pool's file (before the umask).
    pub mode: u32,
    /// Where the pool's file lives (default `/dev/shm`).
    pub dir: PathBuf,
    /// The uid that must own the pool on attach (default: this process's effective uid). Root
    /// too is held to it.
    pub uid: Option<u32>,
    /// Attach a pool whoever owns its file (for root's tools inspecting other users' pools);
    /// `uid` is then ignored. The file's permissions still decide who can open it.
    pub any_owner: bool,
    /// A number the application knows a new pool by, kept in it (Dragon's `muid`); by default
    /// the pool's nonce.
    pub muid: Option<u64>,
    /// What a new pool's file may take of its filesystem's space.
    pub space: Space,
    /// Back a new memfd pool with huge pages ([`Pool::create_memfd_with`]). A named pool has
    /// huge pages when its directory is on hugetlbfs; asking for them elsewhere is an error.
    /// Mapping a pool of huge pages reserves them all at once, so `space` cannot overcommit
    /// them: there must be enough free ([`PoolError::NoHugePages`] otherwise).
    pub huge_pages: bool,
    /// A limit on what a new pool's live allocations may use at once, counted as a buddy
    /// allocator counts them (see [`alloc_core::budget`]; Dragon's pools). Size such a pool
    /// with [`Pool::size_for_budget`].
    pub budget: Option<Budget>,
}

/// How a new pool's file is set against the free space of its filesystem. Pages of a pool file
/// are allocated when first written; on a full tmpfs (`/dev/shm`, 64 MB by default in Docker)
/// that write kills the process with SIGBUS. So by default a pool must fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Space {
    /// The pool must fit in the free space now ([`PoolError::NoSpace`] otherwise). Other files
    /// may still take that space later; `Reserve` rules that out.
    #[default]
    Check,
    /// The whole file is allocated up front (fallocate): no later write can fault for want of
    /// space. Costs the pool's size in memory at once.
    Reserve,
    /// No check: for sparse pools larger than the memory they will use. A write past the
    /// filesystem's free space kills the writer with SIGBUS.
    Overcommit,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            mode: 0o600,
            dir: PathBuf::from(name::DEFAULT_DIR),
            uid: None,
            any_owner: false,
            muid: None,
            space: Space::Check,
            huge_pages: false,
            budget: None,
        }
    }
}

impl PoolOptions {
    fn owned(&self) -> segment::Owned {
        match self.any_owner {
            true => segment::Owned::ByAnyone,
            false => segment::Owned::By(self.uid),
        }
    }
}

/// What [`Pool::reclaim_dead`] gave back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Each freed allocation: its id, its (dead) owner's pid and its size.
    pub freed: Vec<(AllocId, u32, u64)>,
    /// The core's figures: cached blocks returned, blocks in transit healed, half-done claims
    /// and releases finished or undone, waiter slots and records given back, work deferred.
    pub reclaimed: alloc_core::Reclaimed,
}

impl ReclaimReport {
    /// Free blocks that dead processes' caches held, given back.
    pub fn cached_blocks(&self) -> u64 {
        self.reclaimed.cached_blocks
    }
}

/// Who uses a pool, from its header and its process table, judged from this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// The creator's pid (in its own pid namespace).
    pub creator_pid: u32,
    /// The creator's uid.
    pub creator_uid: u32,
    /// Creation time (seconds since the Unix epoch).
    pub created_at: u64,
    /// Whether the creator lives, as far as this process can tell.
    pub creator: Liveness,
    /// Processes recorded in the pool as attached (and not yet marked dead by a reclaim).
    pub attached: Vec<Attached>,
    /// Processes marked dead whose holdings are not reclaimed yet.
    pub dead: Vec<u32>,
}

/// A process a pool records as attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Its pid, in its own pid namespace.
    pub pid: u32,
    /// Whether it lives, as far as this process can tell.
    pub liveness: Liveness,
    /// Whether it is this process.
    pub is_me: bool,
}

impl PoolInfo {
    /// Attached processes other than this one that may still use the pool: alive, or in
    /// another pid namespace (where nothing can be told from here).
    pub fn other_users(&self) -> impl Iterator<Item = &Attached> {
        self.attached.iter().filter(|process| !process.is_me && process.liveness != Liveness::Dead)
    }
}

/// A pool attached in this process. Cloning is cheap and shares the mapping; the mapping goes
/// away when the last clone (and every allocation handle holding one) is dropped.
#[derive(Clone)]
pub struct Pool {
    mapping: Arc<Mapping>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name()).field("path", &self.path()).finish()
    }
}

impl PartialEq for Pool {
    fn eq(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.mapping, &other.mapping)
    }
}

impl Eq for Pool {}

/// What [`Pool::size_for_budget`] adds against fragmentation, beside a span per class.
const FRAGMENTATION_SLACK: u64 = 1 << 20;

impl Pool {
    /// Creates pool `name` of `size` bytes in `/dev/shm`, mode 0600. An existing name is an
    /// error ([`PoolError::AlreadyExists`]).
    pub fn create(name: &str, size: u64) -> Result<Pool> {
        Pool::create_with(name, size, &PoolOptions::default())
    }

    /// [`Pool::create`] with options.
    pub fn create_with(name: &str, size: u64, options: &PoolOptions) -> Result<Pool> {
        let mapping = segment::create(name, size, options)?;
        Ok(Pool { mapping })
    }

    /// Creates a pool of `size` bytes in an anonymous memfd (`name` is what `/proc` shows). It
    /// is sealed: no process can shrink or grow it. Other processes get it as a file
    /// descriptor ([`Pool::send`], [`Pool::from_fd`], or across `fork`), and the kernel frees it
    /// when the last process holding it closes it or dies: nothing is left to clean up after a
    /// crash. Its descriptors resolve only in processes that have it.
    pub fn create_memfd(name: &str, size: u64) -> Result<Pool> {
        Pool::create_memfd_with(name, size, &PoolOptions::default())
    }

    /// [`Pool::create_memfd`] with options (`space`, `huge_pages`, `muid`; `dir` and `mode`
    /// do not apply).
    pub fn create_memfd_with(name: &str, size: u64, options: &PoolOptions) -> Result<Pool> {
        let mapping = segment::create_memfd(name, size, options)?;
        Ok(Pool { mapping })
    }

    /// Attaches the pool whose file `fd` is (a memfd or a named pool's file another process
    /// handed this one). Holding the descriptor is the permission: the file's owner is not
    /// checked.
    pub fn from_fd(fd: OwnedFd) -> Result<Pool> {
        Ok(Pool { mapping: segment::attach_fd(fd)? })
    }

    /// Sends this pool over the Unix socket `socket`: its descriptor as the message and its
    /// file descriptor alongside (SCM_RIGHTS), for [`Pool::receive`] at the other end.
    pub fn send(&self, socket: impl AsFd) -> Result<()> {
        let bytes = self.descriptor()?;
        passing::send(socket.as_fd(), &bytes, self.mapping.fd())
    }

    /// Receives a pool [`Pool::send`] sent over the Unix socket `socket` (blocking as the
    /// socket does).
    pub fn receive(socket: impl AsFd) -> Result<Pool> {
        let (bytes, fd) = passing::receive(socket.as_fd())?;
        Pool::attach_fd(fd, &bytes)
    }

    /// [`Pool::from_fd`], checking that the file is the pool `descriptor` names (a pool
    /// descriptor sent along with it).
    pub fn attach_fd(fd: OwnedFd, descriptor: &[u8]) -> Result<Pool> {
        let described = PoolDescriptor::from_bytes(descriptor)?;
        let pool = Pool::from_fd(fd)?;
        if pool.nonce() != described.nonce {
            return Err(PoolError::InvalidDescriptor("the file descriptor is not the described pool's"));
        }
        Ok(pool)
    }

    /// Whether the pool lives in a memfd rather than a named file.
    pub fn is_memfd(&self) -> bool {
        self.mapping.is_memfd()
    }

    /// The smallest pool size whose data area holds one allocation of `data` bytes (a pool
    /// keeps about 1.6% of its size for metadata: page records, bitmaps, tables).
    pub fn size_for_data(data: u64) -> Result<u64> {
        segment::size_for_data(data)
    }

    /// The size of a pool whose data area holds the sets of allocations a budget of `limit`
    /// bytes admits: the limit, plus room for one span of small blocks per size class and
    /// 1 MiB more against fragmentation (the heap's slack; pages never written cost no memory).
    /// Not a promise for every set: allocations under 16 bytes each take a 16-byte block, and
    /// the heap places runs by first fit, not as a buddy allocator (see
    /// [`alloc_core::budget`]).
    pub fn size_for_budget(limit: u64) -> Result<u64> {
        let span = alloc_core::layout::SPAN_PAGES << alloc_core::layout::DEFAULT_PAGE_SHIFT;
        let slack = alloc_core::layout::NUM_CLASSES as u64 * span + FRAGMENTATION_SLACK;
        let data = limit
            .checked_add(slack)
            .ok_or(PoolError::InvalidSize { size: limit, reason: "no pool can hold that much" })?;
        segment::size_for_data(data)
    }

    /// The pool's budget, if it was created with one.
    pub fn budget(&self) -> Option<Budget> {
        self.mapping.heap().budget()
    }

    /// What is charged against the pool's budget now.
    pub fn budget_used(&self) -> BudgetUsed {
        self.mapping.heap().budget_used()
    }

    /// Creates the pool, or attaches it if it exists already.
    pub fn create_or_attach(name: &str, size: u64, options: &PoolOptions) -> Result<Pool> {
        match Pool::create_with(name, size, options) {
            Err(PoolError::AlreadyExists { .. }) => Pool::attach_by_name_with(name, options),
            other => other,
        }
    }

    /// Attaches pool `name` in `/dev/shm`.
    pub fn attach_by_name(name: &str) -> Result<Pool> {
        Pool::attach_by_name_with(name, &PoolOptions::default())
    }

    /// [`Pool::attach_by_name`] with options (directory, expected owner).
    pub fn attach_by_name_with(pool_name: &str, options: &PoolOptions) -> Result<Pool> {
        name::validate(pool_name)?;
        let path = name::path_in(&options.dir, pool_name);
        let mapping = segment::attach(pool_name, &path, options.owned(), Access::ReadWrite)?;
        Ok(Pool { mapping })
    }

    /// Opens pool `name` for inspection only: the file is mapped read-only (read access to it is
    /// enough), no record is taken, nothing in the pool changes. What tools such as `shmpool
    /// ls` use.
    ///
    /// Only on x86_64 and aarch64, where atomic loads of any ordering are plain loads: Rust
    /// promises that only of relaxed ones on read-only memory, and the inspection path uses
    /// acquire loads (elsewhere it fails with [`PoolError::Unsupported`]).
    pub fn inspect_by_name_with(pool_name: &str, options: &PoolOptions) -> Result<Inspection> {
        name::validate(pool_name)?;
        if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            return Err(PoolError::Unsupported {
                name: pool_name.to_owned(),
                what: "read-only inspection of a pool on this architecture",
            });
        }
        let path = name::path_in(&options.dir, pool_name);
        let mapping = segment::attach(pool_name, &path, options.owned(), Access::ReadOnly)?;
        Ok(Inspection { mapping })
    }

    /// Attaches the pool a pool descriptor names.
    pub fn attach(descriptor: &[u8]) -> Result<Pool> {
        Pool::attach_described(&PoolDescriptor::from_bytes(descriptor)?)
    }

    /// Attaches (if need be) the pool of an allocation descriptor and returns the allocation,
    /// checked live.
    pub fn attach_alloc(descriptor: &[u8]) -> Result<(Pool, Allocation)> {
        let described = AllocDescriptor::from_bytes(descriptor)?;
        let pool = Pool::attach_described(&described.pool)?;
        let allocation = pool.lookup(described.id)?;
        if allocation.offset != described.offset {
            return Err(PoolError::InvalidDescriptor("offset does not match the allocation's id"));
        }
        Ok((pool, allocation))
    }

    fn attach_described(described: &PoolDescriptor) -> Result<Pool> {
        let default_dir = Path::new(name::DEFAULT_DIR);
        let (pool_name, path) = match &described.location {
            Location::Named(pool_name) => (pool_name.clone(), name::path_in(default_dir, pool_name)),
            Location::Path(path) => {
                let file = path.file_name().and_then(|f| f.to_str()).and_then(name::from_file_name);
                let pool_name = file.ok_or(PoolError::InvalidDescriptor("not a pool file path"))?;
                (pool_name.to_owned(), path.clone())
            }
            Location::ByNonce => find_by_nonce(default_dir, described.nonce)?,
            Location::Memfd => {
                let mapping = segment::find_mapped(described.nonce)
                    .filter(|mapping| mapping.len() == described.bytes)
                    .ok_or(PoolError::NotReceived { nonce: described.nonce })?;
                return Ok(Pool { mapping });
            }
        };
        // A descriptor (which anyone can forge) only ever attaches a pool of this user's.
        let pool = match segment::attach(&pool_name, &path, segment::Owned::By(None), Access::ReadWrite) {
            Ok(mapping) => Pool { mapping },
            // The descriptor's pool is gone: say so, rather than "no such file".
            Err(PoolError::NotFound { name }) => return Err(PoolError::Destroyed { name }),
            Err(other) => return Err(other),
        };
        if pool.nonce() != described.nonce {
            return Err(PoolError::Destroyed { name: pool_name });
        }
        if pool.mapping.heap().geometry().region_bytes != described.bytes {
            return Err(PoolError::InvalidDescriptor("pool size does not match"));
        }
        Ok(pool)
    }

    /// This pool's descriptor (at most 128 bytes).
    pub fn descriptor(&self) -> Result<Vec<u8>> {
        Ok(self.described(descriptor::POOL_ROOM)?.to_bytes())
    }

    /// The descriptor of `allocation` (at most 128 bytes), enough for another process to attach
    /// the pool and find the allocation.
    pub fn alloc_descriptor(&self, allocation: &Allocation) -> Result<Vec<u8>> {
        Ok(AllocDescriptor {
            pool: self.described(descriptor::ALLOC_ROOM)?,
            id: allocation.id(),
            offset: allocation.offset,
            size: allocation.size,
            alloc_type: allocation.alloc_type,
        }
        .to_bytes())
    }

    fn described(&self, room: usize) -> Result<PoolDescriptor> {
        let location = match self.is_memfd() {
            true => Location::Memfd,
            false => descriptor::location_for(self.path(), self.name(), room)?,
        };
        Ok(PoolDescriptor { location, nonce: self.nonce(), bytes: self.size() })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        self.mapping.name()
    }

    /// The pool's file; for a memfd pool, `/proc/self/fd/N` (valid in this process only).
    pub fn path(&self) -> &Path {
        self.mapping.path()
    }

    /// Total bytes of the pool (its file size).
    pub fn size(&self) -> u64 {
        self.mapping.len()
    }

    /// Bytes available to allocations (the data area).
    pub fn data_bytes(&self) -> u64 {
        self.mapping.heap().geometry().data_bytes()
    }

    /// Other processes of this pid namespace that map the pool's file right now (whether or not
    /// they ever called into it: a fork child reading inherited memory counts), as far as this
    /// process may read their `/proc/<pid>/maps`. Scans `/proc`: for tools, not hot paths.
    pub fn mapped_by_others(&self) -> Vec<u32> {
        self.mapping.mapped_by_others()
    }

    /// Other processes that may be using the pool, each with what is known of it: attached ones
    /// not known dead ("1234 (live)"), and those of this pid namespace that map its file without
    /// a record, a fork child ("1235 (maps it)"). What `repair` must not run under.
    pub fn other_users_described(&self) -> Vec<String> {
        let info = self.info();
        let recorded: Vec<u32> = info.other_users().map(|process| process.pid).collect();
        let mut users: Vec<String> =
            info.other_users().map(|process| format!("{} ({})", process.pid, process.liveness)).collect();
        let unrecorded = self.mapped_by_others().into_iter().filter(|pid| !recorded.contains(pid));
        users.extend(unrecorded.map(|pid| format!("{pid} (maps it)")));
        users
    }

    /// Creator, attached processes and creation time.
    pub fn info(&self) -> PoolInfo {
        info_of(&self.mapping)
    }

    fn error(&self, cause: alloc_core::Error) -> PoolError {
        PoolError::from_heap(self.name(), cause)
    }

    /// Runs a core operation with this thread's participant.
    fn run<R>(
        &self,
        body: impl FnOnce(&Heap<'static>, &mut Session) -> std::result::Result<R, alloc_core::Error>,
    ) -> Result<R> {
        self.mapping.with_session(body)?.map_err(|cause| self.error(cause))
    }

    /// Allocation options: type DATA, owned by this process.
    pub fn options(&self) -> AllocOptions {
        AllocOptions::default()
    }

    /// This process's record in the pool (what its allocations name as their owner).
    pub fn me(&self) -> Result<Owner> {
        self.mapping.process()
    }

    /// The record of the attached process `pid`, to hand allocations over to it.
    pub fn owner_of(&self, pid: u32) -> Result<Owner> {
        self.mapping
            .heap()
            .find_process(pid)
            .map(|record| record.owner)
            .ok_or(PoolError::NoSuchProcess { name: self.name().to_owned(), pid })
    }

    /// The pid of owner `owner` (`None` for the pool itself, or a record no longer in use).
    pub fn pid_of(&self, owner: Owner) -> Option<u32> {
        pid_of(&self.mapping, owner)
    }

    /// Allocates `size` bytes owned by this process.
    pub fn alloc(&self, size: u64) -> Result<Allocation> {
        self.alloc_with(size, self.options())
    }

    /// Allocates with explicit alignment, type and owner.
    pub fn alloc_with(&self, size: u64, options: AllocOptions) -> Result<Allocation> {
        self.run(|heap, session| heap.alloc(session, size, options))
    }

    /// Allocates, waiting for a free in any process while the pool is full. `None` waits
    /// forever, `Some(ZERO)` tries once, anything else waits until that much time has passed.
    pub fn alloc_blocking(&self, size: u64, timeout: Option<Duration>) -> Result<Allocation> {
        self.alloc_blocking_with(size, self.options(), timeout)
    }

    /// [`Pool::alloc_blocking`] with explicit options.
    pub fn alloc_blocking_with(
        &self,
        size: u64,
        options: AllocOptions,
        timeout: Option<Duration>,
    ) -> Result<Allocation> {
        let mut host = FutexWait::new(timeout);
        self.run(|heap, session| heap.alloc_blocking(session, size, options, &mut host))
    }

    pub(crate) fn wake(&self, wake: Wake) {
        if wake == Wake::Waiters {
            futex::wake_all(self.mapping.heap().wake_word());
        }
    }

    /// Frees allocation `id`. A double free, a stale or foreign id is an error and changes nothing.
    pub fn free(&self, id: AllocId) -> Result<()> {
        let wake = self.run(|heap, session| heap.free(session, id))?;
        self.wake(wake);
        Ok(())
    }

    /// Gives the budget charge of live allocation `id` back now (waking the waiters it kept out)
    /// and leaves the allocation live, for a free that must wait (Python's Dragon semantics,
    /// while buffer views of it are alive). Free it later with [`Pool::free_given_back`], which
    /// gives nothing back; see [`alloc_core::budget`] for crashes. Without a budget, only
    /// checks that the allocation is live.
    pub fn give_back_charge(&self, id: AllocId) -> Result<Uncharged> {
        let (uncharged, wake) = self.run(|heap, session| heap.give_back_charge(session, id))?;
        self.wake(wake);
        Ok(uncharged)
    }

    /// Frees the allocation whose charge [`Pool::give_back_charge`] gave back, giving nothing
    /// back to the budget (an error if it was freed meanwhile).
    pub fn free_given_back(&self, uncharged: Uncharged) -> Result<()> {
        let wake = self.run(|heap, session| heap.free_given_back(session, uncharged))?;
        self.wake(wake);
        Ok(())
    }

    /// Resizes `id`, in place when it fits; otherwise allocates, copies and frees. On failure
    /// the original is untouched.
    pub fn realloc(&self, id: AllocId, new_size: u64) -> Result<Allocation> {
        self.run(|heap, session| heap.realloc(session, id, new_size))
    }

    /// The live allocation `id` (O(1)).
    pub fn lookup(&self, id: AllocId) -> Result<Allocation> {
        self.run(|heap, session| heap.lookup(session, id))
    }

    /// Whether `id` is a live allocation of this pool.
    pub fn contains(&self, id: AllocId) -> bool {
        self.lookup(id).is_ok()
    }

    /// The live allocations (a snapshot, consistent per allocation).
    pub fn iter(&self) -> std::vec::IntoIter<Allocation> {
        let mut all = Vec::new();
        let _ =
            self.run(|heap, session| heap.for_each_allocation(session, |allocation| all.push(allocation)));
        all.into_iter()
    }

    /// Usage figures.
    pub fn stats(&self) -> Result<Stats> {
        self.run(|heap, session| heap.stats(session))
    }

    /// Verifies every invariant of the heap (meaningful when no process is mid-operation).
    pub fn check(&self) -> Result<Stats> {
        self.mapping.check_size()?;
        self.run(|heap, session| heap.check(session))
    }

    /// Records `owner` as the owner of `id` (hand-over to a consumer process, or adoption by
    /// this one), in one atomic step that fails if the allocation is no longer live.
    pub fn set_owner(&self, id: AllocId, owner: Owner) -> Result<()> {
        self.run(|heap, session| heap.set_owner(session, id, owner))
    }

    /// Makes this process the owner of `id` (as a receiver adopts what it was handed).
    pub fn adopt(&self, id: AllocId) -> Result<()> {
        let me = self.me()?;
        self.set_owner(id, me)
    }

    /// Gives `id` to the pool: it is never reclaimed because a process died.
    pub fn give_to_pool(&self, id: AllocId) -> Result<()> {
        self.set_owner(id, Owner::POOL)
    }

    /// Gives back everything processes that no longer exist held or left half done: their
    /// allocations, the blocks their caches held, claims and releases of pages they were in the
    /// middle of, blocks they were moving, their waiter slots and records. Runs online, while
    /// other processes keep working. Reports the allocations it freed.
    pub fn reclaim_dead(&self) -> Result<ReclaimReport> {
        let mut report = ReclaimReport::default();
        let mut freed = Vec::new();
        let reclaimed = self.run(|heap, session| {
            heap.reclaim_dead(session, record_is_dead, |id, owner, size| freed.push((id, owner, size)))
        })?;
        report.freed = freed
            .into_iter()
            .map(|(id, owner, size)| {
                (id, self.mapping.heap().process_record(owner).map_or(0, |r| r.identity.pid), size)
            })
            .collect();
        report.reclaimed = reclaimed;
        if reclaimed.wake {
            futex::wake_all(self.mapping.heap().wake_word());
        }
        Ok(report)
    }

    /// An fsck for a pool whose metadata was damaged: rebuilds what the metadata allows (runs
    /// cut short released, blocks on no list put back, lists made to match the spans). Crashes
    /// do not need it ([`Pool::reclaim_dead`] recovers from those online). Call only when no
    /// other process is inside an operation on this pool.
    pub fn repair(&self) -> Result<Repaired> {
        self.run(|heap, session| heap.repair(session))
    }

    /// Number of callers blocked in `alloc_blocking`, in all processes.
    pub fn waiters(&self) -> u64 {
        self.mapping.heap().waiters()
    }

    /// Lets go of this handle. The mapping goes away when the last handle of this process
    /// (including allocation handles and arenas) is gone; the pool itself stays.
    pub fn detach(self) {}

    /// Marks the pool destroyed in every process and removes its name. Processes still attached
    /// keep a valid mapping; their next call fails with [`PoolError::Destroyed`].
    pub fn destroy(&self) -> Result<()> {
        let wake = self.mapping.heap().mark_destroyed();
        self.wake(wake);
        self.mapping
            .unlink()
            .map_err(|source| PoolError::Io { operation: "removing the pool's file", source })
    }

    /// Whether the pool was destroyed.
    pub fn is_destroyed(&self) -> bool {
        self.mapping.heap().is_destroyed()
    }

    /// A number unique to this pool (fixed at creation): tells it from a later pool of the
    /// same name.
    pub fn nonce(&self) -> u64 {
        self.mapping.nonce()
    }

    /// The number the application gave the pool at creation ([`PoolOptions::muid`]; the nonce
    /// if none).
    pub fn muid(&self) -> u64 {
        self.mapping.muid()
    }

    /// The live allocation `id`'s bytes as a raw pointer and length. Writing through it is the
    /// caller's business (other processes may use the same bytes); the pointer stays valid while
    /// this pool handle (or a clone) lives.
    pub fn bytes_ptr(&self, id: AllocId) -> Result<(*mut u8, usize)> {
        let allocation = self.lookup(id)?;
        Ok((self.ptr_of(&allocation)?, allocation.size as usize))
    }

    /// [`Pool::bytes_ptr`] of an allocation this handle just made or looked up, without looking
    /// it up again (its place is checked against the mapping, its liveness is not).
    pub fn ptr_of(&self, allocation: &Allocation) -> Result<*mut u8> {
        self.check_range(allocation, 0, allocation.size)?;
        // SAFETY: `check_range` proved `offset + size` lies inside the mapping.
        Ok(unsafe { self.mapping.base().add(allocation.offset as usize) })
    }

    fn check_range(&self, allocation: &Allocation, at: u64, len: u64) -> Result<()> {
        let end = at.checked_add(len).filter(|&end| end <= allocation.size);
        let in_mapping =
            allocation.offset.checked_add(allocation.size).is_some_and(|end| end <= self.mapping.len());
        match end {
            Some(_) if in_mapping => Ok(()),
            _ => Err(PoolError::InvalidAllocation {
                name: self.name().to_owned(),
                cause: alloc_core::Error::NotAllocated { id: allocation.id().to_u128() },
            }),
        }
    }

    /// Copies `data` into live allocation `id` at byte `at`.
    pub fn write(&self, id: AllocId, at: u64, data: &[u8]) -> Result<()> {
        let allocation = self.lookup(id)?;
        self.check_range(&allocation, at, data.len() as u64)?;
        // SAFETY: the destination lies inside the live allocation (checked above), which lies
        // inside the mapping; `data` is a separate Rust slice, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.mapping.base().add((allocation.offset + at) as usize),
                data.len(),
            )
        };
        Ok(())
    }

    /// Copies bytes of live allocation `id` from byte `at` into `buffer`.
    pub fn read(&self, id: AllocId, at: u64, buffer: &mut [u8]) -> Result<()> {
        let allocation = self.lookup(id)?;
        self.check_range(&allocation, at, buffer.len() as u64)?;
        // SAFETY: as in `write`, with source and destination swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.mapping.base().add((allocation.offset + at) as usize),
                buffer.as_mut_ptr(),
                buffer.len(),
            )
        };
        Ok(())
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.mapping
    }
}

/// The pool's file (to pass to another process by hand, e.g. with `socket.send_fds`).
impl AsFd for Pool {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.mapping.fd()
    }
}

/// A pool opened read-only by [`Pool::inspect_by_name_with`]: figures, allocations and who
/// uses it, read without taking a record or writing a byte.
pub struct Inspection {
    mapping: Arc<Mapping>,
}

impl Inspection {
    /// The pool's name.
    pub fn name(&self) -> &str {
        self.mapping.name()
    }

    /// The pool's file.
    pub fn path(&self) -> &Path {
        self.mapping.path()
    }

    /// Total bytes of the pool (its file size).
    pub fn size(&self) -> u64 {
        self.mapping.len()
    }

    /// Usage figures and the live allocations, from one walk (each allocation as it was at
    /// some moment of the walk, as [`Pool::iter`]).
    pub fn survey(&self) -> Result<(Stats, Vec<Allocation>)> {
        self.mapping.check_size()?;
        let mut all = Vec::new();
        let stats = self
            .mapping
            .heap()
            .inspect(|allocation| all.push(allocation))
            .map_err(|cause| PoolError::from_heap(self.name(), cause))?;
        Ok((stats, all))
    }

    /// Usage figures, as [`Pool::stats`].
    pub fn stats(&self) -> Result<Stats> {
        self.mapping.check_size()?;
        self.mapping.heap().inspect(|_| {}).map_err(|cause| PoolError::from_heap(self.name(), cause))
    }

    /// Creator, attached processes and creation time, as [`Pool::info`].
    pub fn info(&self) -> PoolInfo {
        info_of(&self.mapping)
    }

    /// The pid of owner `owner`, as [`Pool::pid_of`].
    pub fn pid_of(&self, owner: Owner) -> Option<u32> {
        pid_of(&self.mapping, owner)
    }
}

fn info_of(mapping: &Mapping) -> PoolInfo {
    let (creator_pid, creator_uid) = mapping.creator();
    let heap = mapping.heap();
    let me = current_identity();
    let attached = heap
        .processes()
        .filter(|record| matches!(record.state, RecordState::Active | RecordState::Registering))
        .map(|record| Attached {
            pid: record.identity.pid,
            liveness: if record_is_dead(&record) { Liveness::Dead } else { liveness(&record.identity) },
            is_me: record.identity == me,
        })
        .collect();
    PoolInfo {
        creator_pid,
        creator_uid,
        created_at: mapping.created_at(),
        creator: liveness(&mapping.creator_identity()),
        attached,
        dead: heap
            .processes()
            .filter(|record| record.state == RecordState::Dead)
            .map(|record| record.identity.pid)
            .collect(),
    }
}

fn pid_of(mapping: &Mapping, owner: Owner) -> Option<u32> {
    mapping
        .heap()
        .process_record(owner)
        .filter(|record| record.state != RecordState::Free)
        .map(|record| record.identity.pid)
}

fn find_by_nonce(dir: &Path, nonce: u64) -> Result<(String, PathBuf)> {
    let names = segment::list(dir).map_err(|source| PoolError::Io { operation: "listing pools", source })?;
    names
        .into_iter()
        .map(|pool_name| {
            let path = name::path_in(dir, &pool_name);
            (pool_name, path)
        })
        .find(|(_, path)| segment::read_nonce(path) == Some(nonce))
        .ok_or(PoolError::Destroyed { name: format!("<pool with nonce {nonce:#x}>") })
}

/// The names of the pools in `dir`.
pub fn list_pools(dir: &Path) -> Result<Vec<String>> {
    segment::list(dir).map_err(|source| PoolError::Io { operation: "listing pools", source })
}

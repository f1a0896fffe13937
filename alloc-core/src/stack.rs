//! A Treiber stack of spans, one per size class: the spans that have (or recently had) free
//! blocks. The head word packs the top span (page + 1, 0 = empty) with a 32-bit tag that every
//! push and pop bumps, so a pop that read a stale top and next cannot succeed (ABA). The link of
//! each span lives in its head page's metadata, which is never handed out as user data, so
//! reading the link of a span that was popped meanwhile is harmless: the CAS then fails.

use crate::error::Error;
use crate::layout::StackHead;
use crate::primitive::{AtomicU64, Ordering};

/// One class stack: its head word and the links, found at `meta[page * stride + link]`.
#[derive(Clone, Copy)]
pub struct SpanStack<'a> {
    head: &'a AtomicU64,
    meta: &'a [AtomicU64],
    stride: usize,
    link: usize,
    pages: u64,
}

impl<'a> SpanStack<'a> {
    /// A stack whose head is `head` and whose links are at `meta[page * stride + link]` for
    /// pages `0..pages`.
    pub fn new(head: &'a AtomicU64, meta: &'a [AtomicU64], stride: usize, link: usize, pages: u64) -> Self {
        SpanStack { head, meta, stride, link, pages }
    }

    fn link_of(&self, page: u64) -> &AtomicU64 {
        &self.meta[page as usize * self.stride + self.link]
    }

    /// Decodes a stored "page + 1" reference, checking it against the page count.
    fn page_ref(&self, stored: u64) -> Result<Option<u64>, Error> {
        match stored {
            0 => Ok(None),
            n if n <= self.pages => Ok(Some(n - 1)),
            n => Err(Error::Corrupt { what: "class stack names a page past the end", page: n }),
        }
    }

    /// Pushes `page`, which must not be in any stack.
    pub fn push(&self, page: u64) {
        let mut head = StackHead::decode(self.head.load(Ordering::Relaxed));
        loop {
            self.link_of(page).store(head.top, Ordering::Relaxed);
            let new = StackHead { top: page + 1, tag: head.tag.wrapping_add(1) };
            // ORDERING: Release publishes the link just written (and the span's set-up) to the
            // Acquire load in `pop` that sees this head.
            match self.head.compare_exchange_weak(
                head.encode(),
                new.encode(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => head = StackHead::decode(actual),
            }
        }
    }

    /// Pops the top span, if any.
    pub fn pop(&self) -> Result<Option<u64>, Error> {
        // ORDERING: Acquire pairs with the Release of the push that made this head, so the top's
        // link as written by that push is visible.
        let mut head = StackHead::decode(self.head.load(Ordering::Acquire));
        loop {
            let Some(top) = self.page_ref(head.top)? else {
                return Ok(None);
            };
            let next = self.link_of(top).load(Ordering::Relaxed);
            let new = StackHead { top: next & 0xFFFF_FFFF, tag: head.tag.wrapping_add(1) };
            // ORDERING: Acquire on failure re-reads a head whose link we then read, as above.
            match self.head.compare_exchange_weak(
                head.encode(),
                new.encode(),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Some(top)),
                Err(actual) => head = StackHead::decode(actual),
            }
        }
    }

    /// Detaches the whole stack and returns its top; walk it with [`SpanStack::next_detached`].
    /// The detached chain belongs to the caller alone.
    pub fn take_all(&self) -> Result<Option<u64>, Error> {
        // ORDERING: Acquire makes every link of the chain (each published by a Release push
        // that happened before the head we swap out) visible.
        let mut head = StackHead::decode(self.head.load(Ordering::Acquire));
        loop {
            if head.top == 0 {
                return Ok(None);
            }
            // ORDERING (below): Acquire on success and failure, as for the load above.
            let new = StackHead { top: 0, tag: head.tag.wrapping_add(1) };
            match self.head.compare_exchange_weak(
                head.encode(),
                new.encode(),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return self.page_ref(head.top),
                Err(actual) => head = StackHead::decode(actual),
            }
        }
    }

    /// The span after `page` in a detached chain (or, as a snapshot, in the live stack).
    pub fn next_detached(&self, page: u64) -> Result<Option<u64>, Error> {
        self.page_ref(self.link_of(page).load(Ordering::Relaxed) & 0xFFFF_FFFF)
    }

    /// The top span (a snapshot).
    pub fn peek(&self) -> Result<Option<u64>, Error> {
        // ORDERING: Acquire pairs with the Release push that made this head, as in `pop`.
        self.page_ref(StackHead::decode(self.head.load(Ordering::Acquire)).top)
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;

    #[test]
    fn pops_in_reverse_push_order_and_detaches_whole_chains() {
        let head = AtomicU64::new(0);
        let links: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let stack = SpanStack::new(&head, &links, 1, 0, 4);
        stack.push(2);
        stack.push(0);
        stack.push(3);
        assert_eq!(stack.pop(), Ok(Some(3)));
        let top = stack.take_all().expect("valid").expect("two left");
        assert_eq!(top, 0);
        assert_eq!(stack.next_detached(0), Ok(Some(2)));
        assert_eq!(stack.next_detached(2), Ok(None));
        assert_eq!(stack.pop(), Ok(None));
    }

    #[test]
    fn a_corrupted_link_is_an_error_not_an_out_of_bounds_read() {
        let head = AtomicU64::new(StackHead { top: 99, tag: 0 }.encode());
        let links: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let stack = SpanStack::new(&head, &links, 1, 0, 4);
        assert!(matches!(stack.pop(), Err(Error::Corrupt { .. })));
    }
}

//! Items grouped by the value of one tag, found without a scan: a pass over
//! thousands of instances reads each box's or pool's own from here instead
//! of looking at every instance for each. Built in two passes (count, then
//! fill one array of positions with a range per value): a handful of
//! allocations, not one growing list per value.

use std::collections::HashMap;
use std::ops::Range;

/// Positions in a slice of items, grouped by one tag's value.
#[derive(Debug, Clone, Default)]
pub struct TagIndex {
    positions: Vec<usize>,
    ranges: HashMap<String, Range<usize>>,
}

impl TagIndex {
    /// Indexes `items` by `value` (items without one are left out), each
    /// group in the items' order.
    pub fn build<T>(items: &[T], value: impl Fn(&T) -> Option<&str>) -> Self {
        // Per value: how many, then where the next one goes.
        let mut slots: HashMap<&str, (usize, usize)> = HashMap::new();
        for item in items {
            if let Some(v) = value(item) {
                slots.entry(v).or_default().0 += 1;
            }
        }
        let mut ranges = HashMap::with_capacity(slots.len());
        let mut start = 0;
        for (v, (count, next)) in slots.iter_mut() {
            ranges.insert((*v).to_owned(), start..start + *count);
            *next = start;
            start += *count;
        }
        let mut positions = vec![0; start];
        for (n, item) in items.iter().enumerate() {
            if let Some(slot) = value(item).and_then(|v| slots.get_mut(v)) {
                positions[slot.1] = n;
                slot.1 += 1;
            }
        }
        Self { positions, ranges }
    }

    /// The positions of the items whose value is `value`, in their order.
    pub fn of(&self, value: &str) -> &[usize] {
        self.ranges
            .get(value)
            .map_or(&[][..], |r| &self.positions[r.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::TagIndex;

    #[test]
    fn each_value_gets_its_items_in_order_and_items_without_one_are_left_out() {
        let items = [Some("a"), None, Some("b"), Some("a"), Some("c"), Some("a")];
        let index = TagIndex::build(&items, |v| *v);
        assert_eq!(index.of("a"), [0, 3, 5]);
        assert_eq!(index.of("b"), [2]);
        assert_eq!(index.of("c"), [4]);
        assert!(index.of("d").is_empty());
    }
}

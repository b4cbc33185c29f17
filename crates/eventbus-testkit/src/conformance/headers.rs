//! Check 31, `reserved_headers`: user headers never take the place of what a transport writes
//! for itself, and never decide a message's key.

use std::sync::Arc;

use eventbus_core::validate::{RESERVED_HEADER_PREFIXES, RESERVED_HEADERS};
use eventbus_core::{Error, HeaderError};

use super::support::{
    Harness, Record, close_bus, close_subs, id_of, message, publish_all, recorder, subscribe,
    unique, user_headers,
};

/// Check 31, `reserved_headers` (beyond the shared list): a message carrying a reserved header
/// name (`eventbus_core::validate::RESERVED_HEADERS`, or a name with a reserved prefix) is
/// refused with `Error::InvalidHeader` / `HeaderError::Reserved`, singly and in a batch, and
/// nothing of it arrives; names that only look like them (another case, a longer name) arrive
/// intact, and a message without a key stays without one whatever its headers say.
pub async fn reserved_headers(h: &Harness) {
    let topic = unique("reserved-headers");
    let group = unique("g");
    let bus = h.bus().await;
    let rec = Arc::new(Record::default());
    let sub = subscribe(&bus, &topic, &group, recorder(&rec)).await;

    let mut reserved: Vec<String> = RESERVED_HEADERS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    for (prefix, _) in RESERVED_HEADER_PREFIXES {
        reserved.push(format!("{prefix}Msg-Id"));
        reserved.push(format!("{}expected-stream", prefix.to_ascii_lowercase()));
    }
    for (i, name) in reserved.iter().enumerate() {
        let m = message(&topic, &format!("reserved-{i}")).with_header(name.as_str(), "victim");
        let single = bus.publish(m.clone()).await;
        let batch = bus
            .publish_batch(vec![message(&topic, &format!("beside-{i}")), m])
            .await;
        for (how, result) in [("publish", single), ("publish_batch", batch)] {
            assert!(
                matches!(
                    result,
                    Err(Error::InvalidHeader {
                        reason: HeaderError::Reserved { .. },
                        ..
                    })
                ),
                "{}: {how} of a message with the reserved header {name:?}: expected InvalidHeader (Reserved), got {result:?}",
                h.name()
            );
        }
    }

    // Look-alikes are user headers like any other.
    let look_alikes: Vec<String> = RESERVED_HEADERS
        .iter()
        .flat_map(|(n, _)| [n.to_ascii_uppercase(), format!("{n}s"), format!("x-{n}")])
        .collect();
    let mut keyless = message(&topic, "keyless");
    for name in &look_alikes {
        keyless = keyless.with_header(name.as_str(), "victim");
    }
    let keyed = message(&topic, "keyed")
        .with_key("owner")
        .with_header("EB-KEY", "victim");
    publish_all(h, &bus, vec![keyless.clone(), keyed.clone()]).await;
    rec.wait_for(h, 2, "both look-alike messages").await;
    close_subs(h, vec![sub]).await;
    close_bus(h, &bus).await;

    let got = rec.messages();
    let ids: Vec<String> = got.iter().map(|m| id_of(m)).collect();
    assert_eq!(
        ids.len(),
        2,
        "{}: only the two look-alike messages arrive, nothing with a reserved header: got {ids:?}",
        h.name()
    );
    for sent in [&keyless, &keyed] {
        let m = got
            .iter()
            .find(|m| id_of(m) == id_of(sent))
            .unwrap_or_else(|| panic!("{}: {} did not arrive", h.name(), id_of(sent)));
        assert_eq!(
            m.key(),
            sent.key(),
            "{}: the key of {} comes from the message's key, never from a header",
            h.name(),
            id_of(sent)
        );
        assert_eq!(
            user_headers(m),
            user_headers(sent),
            "{}: headers of {} (left: got, right: sent)",
            h.name(),
            id_of(sent)
        );
    }
}

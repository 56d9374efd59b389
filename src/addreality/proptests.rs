//! Property tests: a `device/list` body is outside input (the API, or
//! whatever a proxy put in its place), so no bytes at all, and no damaged or
//! cut copy of a real page, make [`parse_page`] panic.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

use super::model::{parse_page, PageError};

/// A page as the API sends it, with the odd devices it sometimes holds.
const PAGE: &[u8] = br#"{"pagination":{"offset":0,"limit":300,"total":3},"data":[
    {"id":30785,"name":"Arzamas_Lesnaia_1","connection_state":"online",
     "player_status":"playback","last_online":"2025-05-26T13:29:08.166738Z",
     "activation_state":true,"player_version":"4.1.76","time_zone":"+01:00",
     "group":{"id":7,"name":"\u0421\u043a\u043b\u0430\u0434 \"1\""}},
    {"id":"30786","name":"\u0421\u043a\u043b\u0430\u0434","connection_state":"offline",
     "last_online":"2025-05-26T13:29:08+03:00","activation_state":0},
    {"id":30787,"name":null,"last_online":1748266148}]}"#;

/// A byte that JSON gives a meaning to, or any byte at all.
fn json_byte() -> impl Strategy<Value = u8> {
    prop_oneof![prop::sample::select(b"[]{}:,\"\\0-.eEtn ".to_vec()), any::<u8>()]
}

/// One edit of a body: a byte replaced, removed or inserted, or the body cut.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, u8),
    Remove(Index),
    Insert(Index, u8),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), json_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), json_byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn edited(body: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = body.to_vec();
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Edit::Replace(at, b) if len > 0 => bytes[at.index(len)] = b,
            Edit::Remove(at) if len > 0 => drop(bytes.remove(at.index(len))),
            Edit::Insert(at, b) => bytes.insert(at.index(len + 1), b),
            Edit::Truncate(at) => bytes.truncate(at.index(len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Parses `body`; a page must account for every entry, an error must show.
fn parse_and_check(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_page(body) {
        Ok(page) => {
            prop_assert_eq!(page.devices.len() + page.skipped.len(), page.entries);
            prop_assert!(page.skipped.iter().all(|s| s.index < page.entries));
        }
        Err(err) => prop_assert!(!err.to_string().is_empty()),
    }
    Ok(())
}

/// A JSON value of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,16}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A device entry whose known fields hold any JSON at all.
fn any_device() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        any_json(),
        any::<String>().prop_map(Value::String),
        "[0-9T:.+Z-]{0,32}".prop_map(Value::String),
    ];
    (prop_oneof![any::<i64>().prop_map(Value::from), any_json()], prop::collection::vec(field, 7))
        .prop_map(|(id, f)| {
            json!({"id": id, "name": f[0], "connection_state": f[1], "player_status": f[2],
                   "last_online": f[3], "activation_state": f[4], "player_version": f[5],
                   "time_zone": f[6]})
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_are_a_page_or_an_error(body in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_and_check(&body)?;
    }

    #[test]
    fn an_edited_page_is_a_page_or_an_error(edits in prop::collection::vec(edit(), 1..8)) {
        parse_and_check(&edited(PAGE, &edits))?;
    }

    #[test]
    fn a_page_cut_anywhere_is_not_json(at in any::<Index>()) {
        let end = PAGE.trim_ascii_end().len();
        let cut = &PAGE[..at.index(end)];
        let result = parse_page(cut);
        prop_assert!(matches!(result, Err(PageError::NotJson { .. })), "{:?}", result.err());
    }

    #[test]
    fn devices_with_fields_of_any_shape_are_kept_or_skipped(
        devices in prop::collection::vec(any_device(), 0..6),
        pagination in any_json(),
    ) {
        let body = json!({"pagination": pagination, "data": devices}).to_string();
        let page = parse_page(body.as_bytes()).unwrap();
        prop_assert_eq!(page.entries, devices.len());
        for listed in &page.devices {
            prop_assert!(devices.iter().any(|d| d["id"] == listed.device.id
                || d["id"].as_str().is_some_and(|s| s.trim().parse() == Ok(listed.device.id))));
        }
        parse_and_check(body.as_bytes())?;
    }
}

#[test]
fn the_unedited_page_is_read_whole() {
    let page = parse_page(PAGE).unwrap();
    assert_eq!((page.entries, page.devices.len(), page.total), (3, 3, Some(3)));
}

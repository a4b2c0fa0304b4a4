//! The `data.*` built-ins.
//!
//! Arrays hold at most [`MAX_ITEMS`] items (FUNCTIONS.md). The bodies live in
//! submodules by theme; this file registers them in catalog order. Everything whose
//! work grows with a 100,000-item array or a 1 MiB text runs on the blocking pool;
//! `json_pointer` (a walk down one path) and `paginate` (at most 1,000 items) run
//! inline.

use serde_json::json;

use crate::schema::Ty;
use crate::Builtin;

mod codecs;
mod lists;
mod records;
mod validate;
mod value;

/// Most items in any array input.
const MAX_ITEMS: usize = 100_000;

/// An array of any JSON values, capped at [`MAX_ITEMS`].
fn any_array() -> Ty {
    Ty::array(Ty::Any, MAX_ITEMS)
}

/// Most items of `data.group_by`: it copies every item into its group, which costs
/// about 1.3 µs an item here, so 100,000 would take far past one cheap call.
const GROUP_BY_MAX_ITEMS: usize = 25_000;

/// An array of objects, capped at [`MAX_ITEMS`].
fn object_array() -> Ty {
    Ty::array(Ty::Object, MAX_ITEMS)
}

pub(crate) fn register(out: &mut Vec<Builtin>) {
    out.push(
        Builtin::describe(
            "data.sort",
            "Returns the values sorted (all numbers or all strings)",
        )
        .param("values", any_array())
        .optional("descending", Ty::Bool)
        .example(json!({"values": [3, 1, 2]}), json!([1, 2, 3]))
        .linear(lists::sort),
    );
    out.push(
        Builtin::describe(
            "data.unique",
            "Returns the first occurrence of each value, in order",
        )
        .param("values", any_array())
        .example(json!({"values": [1, "a", 1, 2, "a"]}), json!([1, "a", 2]))
        .linear(lists::unique),
    );
    out.push(
        Builtin::describe("data.reverse", "Returns the values in reverse order")
            .param("values", any_array())
            .example(json!({"values": [1, 2, 3]}), json!([3, 2, 1]))
            .linear(lists::reverse),
    );
    out.push(
        Builtin::describe(
            "data.flatten",
            "Returns the array with nested arrays spliced in, `depth` levels deep (default: all)",
        )
        .param("values", any_array())
        .optional("depth", Ty::int_range(0, i64::MAX))
        .example(json!({"values": [1, [2, [3, [4]]]]}), json!([1, 2, 3, 4]))
        .linear(lists::flatten),
    );
    out.push(
        Builtin::describe(
            "data.chunk",
            "Returns the values split into arrays of at most `size` items",
        )
        .param("values", any_array())
        .param("size", Ty::int_range(1, i64::MAX))
        .example(
            json!({"values": [1, 2, 3, 4, 5], "size": 2}),
            json!([[1, 2], [3, 4], [5]]),
        )
        .linear(lists::chunk),
    );
    out.push(
        Builtin::describe(
            "data.zip",
            "Returns pairs [a_i, b_i], as many as the shorter array has",
        )
        .param("a", any_array())
        .param("b", any_array())
        .example(
            json!({"a": [1, 2, 3], "b": ["x", "y"]}),
            json!([[1, "x"], [2, "y"]]),
        )
        .linear(lists::zip),
    );
    out.push(
        Builtin::describe(
            "data.group_by",
            "Returns an object from each key value (as text; \"null\" when missing) to its items",
        )
        .param("items", Ty::array(Ty::Object, GROUP_BY_MAX_ITEMS))
        .param("key", Ty::text())
        .example(
            json!({"items": [
                {"kind": "fruit", "name": "apple"},
                {"kind": "veg", "name": "leek"},
                {"kind": "fruit", "name": "pear"}
            ], "key": "kind"}),
            json!({
                "fruit": [{"kind": "fruit", "name": "apple"}, {"kind": "fruit", "name": "pear"}],
                "veg": [{"kind": "veg", "name": "leek"}]
            }),
        )
        .linear(records::group_by),
    );
    out.push(
        Builtin::describe(
            "data.filter",
            "Returns the items whose field compares to the value by op",
        )
        .param("items", object_array())
        .param("field", Ty::text())
        .param("op", Ty::Enum(records::FILTER_OPS))
        .param("value", Ty::Any)
        .example(
            json!({"items": [{"name": "ada", "age": 36}, {"name": "tim", "age": 9}],
                       "field": "age", "op": "ge", "value": 18}),
            json!([{"name": "ada", "age": 36}]),
        )
        .linear(records::filter),
    );
    out.push(
        Builtin::describe(
            "data.pluck",
            "Returns each item's value of the field (null where missing)",
        )
        .param("items", object_array())
        .param("field", Ty::text())
        .example(
            json!({"items": [{"name": "ada"}, {"name": "tim"}, {}], "field": "name"}),
            json!(["ada", "tim", null]),
        )
        .linear(records::pluck),
    );
    out.push(
        Builtin::describe(
            "data.count_by",
            "Returns an object from each key value (as text; \"null\" when missing) to its count",
        )
        .param("items", object_array())
        .param("key", Ty::text())
        .example(
            json!({"items": [{"kind": "fruit"}, {"kind": "veg"}, {"kind": "fruit"}], "key": "kind"}),
            json!({"fruit": 2, "veg": 1}),
        )
        .linear(records::count_by),
    );
    out.push(
        Builtin::describe(
            "data.merge",
            "Returns the deep merge of the objects; later ones win and arrays are replaced",
        )
        .param("objects", object_array())
        .example(
            json!({"objects": [{"a": 1, "b": {"c": 2, "d": [1]}}, {"b": {"d": [2], "e": 3}}]}),
            json!({"a": 1, "b": {"c": 2, "d": [2], "e": 3}}),
        )
        .linear(records::merge),
    );
    out.push(
        Builtin::describe(
            "data.json_pointer",
            "Returns the value at an RFC 6901 JSON Pointer",
        )
        .param("document", Ty::Any)
        .param("pointer", Ty::text())
        .example(
            json!({"document": {"a": {"b": [10, 20]}}, "pointer": "/a/b/1"}),
            json!(20),
        )
        .inline(records::json_pointer),
    );
    out.push(
        Builtin::describe(
            "data.csv_to_json",
            "Returns the CSV rows as objects keyed by the header (or as arrays), values as text",
        )
        .param("csv", Ty::text())
        .optional("header", Ty::Bool)
        .example(
            json!({"csv": "name,age\nada,36\n\"Lovelace, A\",37\n"}),
            json!([{"name": "ada", "age": "36"}, {"name": "Lovelace, A", "age": "37"}]),
        )
        .linear(codecs::csv_to_json),
    );
    out.push(
        Builtin::describe(
            "data.json_to_csv",
            "Returns CSV text with a header row, columns in first-seen order",
        )
        .param("items", object_array())
        .example(
            json!({"items": [{"name": "ada"}, {"name": "Lovelace, A", "city": "London"}]}),
            json!("name,city\nada,\n\"Lovelace, A\",London\n"),
        )
        .linear(codecs::json_to_csv),
    );
    out.push(
        Builtin::describe(
            "data.base64_encode",
            "Returns the standard, padded base64 of the text",
        )
        .param("text", Ty::text())
        .example(json!({"text": "hello"}), json!("aGVsbG8="))
        .linear(codecs::base64_encode),
    );
    out.push(
        Builtin::describe(
            "data.base64_decode",
            "Returns the text encoded in standard, padded base64",
        )
        .param("data", Ty::text())
        .example(json!({"data": "aGVsbG8="}), json!("hello"))
        .linear(codecs::base64_decode),
    );
    out.push(
        Builtin::describe(
            "data.hex_encode",
            "Returns the lowercase hex of the text's UTF-8 bytes",
        )
        .param("text", Ty::text())
        .example(json!({"text": "hi!"}), json!("686921"))
        .linear(codecs::hex_encode),
    );
    out.push(
        Builtin::describe(
            "data.hex_decode",
            "Returns the text whose UTF-8 bytes the hex spells",
        )
        .param("data", Ty::text())
        .example(json!({"data": "686921"}), json!("hi!"))
        .linear(codecs::hex_decode),
    );
    out.push(
        Builtin::describe(
            "data.url_encode",
            "Returns the text percent-encoded except for RFC 3986 unreserved characters",
        )
        .param("text", Ty::text())
        .example(json!({"text": "a b&c/é"}), json!("a%20b%26c%2F%C3%A9"))
        .linear(codecs::url_encode),
    );
    out.push(
        Builtin::describe(
            "data.url_decode",
            "Returns the text with percent-escapes decoded",
        )
        .param("text", Ty::text())
        .example(json!({"text": "a%20b%26c%2F%C3%A9"}), json!("a b&c/é"))
        .linear(codecs::url_decode),
    );
    out.push(
        Builtin::describe(
            "data.json_schema_validate",
            "Returns {valid, errors} of the document against a JSON Schema (draft 2020-12)",
        )
        .param("document", Ty::Any)
        .param("schema", Ty::Any)
        .example(
            json!({"document": {"age": "ten"},
                   "schema": {"type": "object", "properties": {"age": {"type": "integer"}}}}),
            json!({"valid": false, "errors": [
                {"path": "/age", "message": "\"ten\" is not of type \"integer\""}
            ]}),
        )
        .blocking(validate::json_schema_validate),
    );
    out.push(
        Builtin::describe(
            "data.set_operations",
            "Returns the union, intersection, difference and symmetric difference of a and b",
        )
        .param("a", any_array())
        .param("b", any_array())
        .example(
            json!({"a": [1, 2, 3, 2], "b": [2, 3, 4]}),
            json!({"union": [1, 2, 3, 4], "intersection": [2, 3], "difference": [1],
                   "symmetric_difference": [1, 4]}),
        )
        .linear(lists::set_operations),
    );
    out.push(
        Builtin::describe(
            "data.histogram",
            "Returns {edges, counts} of equal-width bins over [min, max] (one bin if all equal)",
        )
        .param("values", Ty::non_empty_array(Ty::number(), MAX_ITEMS))
        .param("bins", Ty::int_range(1, 1000))
        .example(
            json!({"values": [1, 2, 2, 3, 4], "bins": 3}),
            json!({"edges": [1.0, 2.0, 3.0, 4.0], "counts": [1, 2, 2]}),
        )
        .blocking(lists::histogram),
    );
    out.push(
        Builtin::describe(
            "data.transpose",
            "Returns the matrix with rows and columns swapped",
        )
        .param("matrix", Ty::array(any_array(), MAX_ITEMS))
        .example(
            json!({"matrix": [[1, 2, 3], [4, 5, 6]]}),
            json!([[1, 4], [2, 5], [3, 6]]),
        )
        .linear(lists::transpose),
    );
    out.push(
        Builtin::describe(
            "data.paginate",
            "Returns one page of the values with {items, page, per_page, total, total_pages}",
        )
        .param("values", any_array())
        .param("page", Ty::int_range(1, i64::MAX))
        .param("per_page", Ty::int_range(1, lists::MAX_PER_PAGE))
        .example(
            json!({"values": [1, 2, 3, 4, 5], "page": 2, "per_page": 2}),
            json!({"items": [3, 4], "page": 2, "per_page": 2, "total": 5, "total_pages": 3}),
        )
        .inline(lists::paginate),
    );
}

//! The template engine must never panic, whatever the template, outputs, blocks or
//! variables: the input is split into a template (as JSON if it parses, else as a
//! string) and a values document.
#![no_main]

use hoist_project::template::{self, Blocks, Context, Options, Resolved};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (t, v) = text.split_once('\u{1}').unwrap_or((&text, "{}"));
    let tmpl: Value = serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()));
    let values: Value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    hoist_template_smoke(&tmpl, &values);
});

fn hoist_template_smoke(tmpl: &Value, values: &Value) {
    let env = [("HOME".to_string(), "/root".to_string())].into();
    for remove_unset in [true, false] {
        let opts = Options {
            remove_unset,
            skip_prefixes: &["ctx."],
        };
        if let Resolved::Value(v) = template::apply_values(tmpl, values, &env, &opts) {
            let _ = template::python_str(&v);
        }
    }
    let mut blocks = Blocks::default();
    if let Value::Object(m) = values {
        for (k, v) in m {
            blocks.by_name.insert((k.clone(), k.clone()), v.clone());
            blocks.by_id.insert(k.clone(), v.clone());
        }
    }
    let _ = template::resolve_blocks(tmpl, &blocks);
    let vars = values
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let _ = template::resolve_variables(tmpl, &vars);
    let cx = Context {
        outputs: values.clone(),
        env,
        blocks,
        variables: vars,
    };
    let _ = template::resolve_step_inputs(tmpl, &cx);
    let _ = template::step_sources(tmpl, &cx.env);
    // Outputs are opaque (template::resolve_step): an output that is only placeholder
    // text comes out of the passes as that same text.
    let evil = serde_json::json!({"o": values});
    if let Ok(v) = template::resolve_step(
        &Value::String("{{ o }}".into()),
        &evil,
        &cx.env,
        &cx.blocks,
        &cx.variables,
    ) {
        assert_eq!(&v, values);
    }
    let _ = template::block_refs(tmpl);
    let _ = template::variable_refs(tmpl);
}

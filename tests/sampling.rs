//! Typed sampling: seeds are reproducible, grammars and JSON schemas
//! constrain, logit biases and penalties apply, logprobs are reported, and
//! bad values are typed errors.

use wasi_nn_llm_tests::{MODEL, chatml, host, serial};

#[test]
fn seeds_grammars_schemas_biases_and_logprobs() {
    let _serial = serial();
    let lines = host().probe(&["sample", MODEL, &chatml("What is the capital of France?")]);
    let r = &lines[0];

    assert_eq!(r["seed-1"], r["seed-1-again"], "the same seed gives the same text");
    assert_ne!(r["seed-1"], r["seed-2"], "another seed gives another text");

    let json: serde_json::Value = serde_json::from_str(r["json"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("schema-constrained output is not JSON ({e}): {}", r["json"]));
    assert!(json["city"].is_string() && json["population"].is_i64(), "{json}");
    assert!(matches!(r["grammar"].as_str().unwrap(), "yes" | "no"), "{}", r["grammar"]);

    let greedy = r["greedy"].as_str().unwrap();
    assert!(greedy.contains("Paris"));
    let banned = r["banned-first"].as_str().unwrap();
    assert!(!banned.starts_with(&greedy[..1]), "banning the first token changes the start: {banned:?}");
    assert_ne!(r["penalised"], r["greedy"]);

    let logprobs = r["logprobs"].as_array().unwrap();
    assert!(!logprobs.is_empty());
    for l in logprobs {
        let top = l["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy picks the most likely token, so it heads the list.
        assert_eq!(top[0][0], l["token"]);
        let lp = l["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0 && lp == top[0][1].as_f64().unwrap(), "{l}");
        assert!(top[1][1].as_f64().unwrap() <= lp);
    }

    let error = |case: &str| {
        let line = lines.iter().find(|l| l["case"] == case).unwrap_or_else(|| panic!("{case} missing"));
        line["llm-error"].as_str().unwrap_or_else(|| panic!("{case}: {line}")).to_owned()
    };
    assert!(error("invalid-grammar").starts_with("Error::InvalidGrammar("));
    assert!(error("invalid-schema").starts_with("Error::InvalidGrammar(\"json-schema is not valid JSON"));
    assert!(error("nan-temperature").starts_with("Error::InvalidArgument(\"temperature"));
}

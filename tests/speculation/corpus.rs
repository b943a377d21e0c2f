//! The equality test's prompts: half of them ask the model to repeat what
//! the prompt holds (where lookup drafts are accepted), half ask for free
//! text (where they mostly are not). Written for this test.

const PARAGRAPHS: [&str; 6] = [
    "The old lighthouse stood at the edge of the cliff. Every night its keeper climbed the spiral stairs, \
     lit the lamp, and watched the ships pass safely through the narrow channel below.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make \
     glucose and oxygen. It takes place mostly in the leaves, inside small structures called chloroplasts.",
    "Our team meets every Monday at nine to plan the week. Each person says what they finished, what they \
     will do next, and what is blocking them, and the meeting ends within fifteen minutes.",
    "The recipe needs two cups of flour, one cup of sugar, three eggs and a pinch of salt. Mix the dry \
     ingredients first, then add the eggs one at a time and stir until the batter is smooth.",
    "The train to the coast leaves the central station at eight in the morning. It stops in four small \
     towns along the river and arrives at the seaside just before noon.",
    "Rivers carry water from the mountains to the sea. Along the way they shape valleys, feed farmland, \
     and provide homes for fish, birds and many other animals.",
];

const SWAPS: [(&str, &str); 6] = [
    ("night", "evening"),
    ("green", "living"),
    ("Monday", "Tuesday"),
    ("flour", "oat flour"),
    ("train", "bus"),
    ("Rivers", "Streams"),
];

const CODE: [&str; 5] = [
    "def total(items):\n    result = 0\n    for item in items:\n        result = result + item.price\n    return result\n",
    "fn largest(values: &[i32]) -> i32 {\n    let mut best = values[0];\n    for &value in values {\n        if value > best {\n            best = value;\n        }\n    }\n    best\n}\n",
    "function greet(name) {\n  const message = 'Hello, ' + name + '!';\n  console.log(message);\n  return message;\n}\n",
    "def count_words(text):\n    counts = {}\n    for word in text.split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts\n",
    "int sum(int *numbers, int length) {\n    int acc = 0;\n    for (int i = 0; i < length; i++) {\n        acc += numbers[i];\n    }\n    return acc;\n}\n",
];

const RENAMES: [(&str, &str); 5] =
    [("result", "sum"), ("best", "maximum"), ("message", "greeting"), ("counts", "tally"), ("acc", "total")];

const LISTS: [&str; 4] = [
    "apples, pears, plums, cherries, grapes, lemons, limes, oranges",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday",
    "red, orange, yellow, green, blue, indigo, violet",
    "Paris, Berlin, Madrid, Rome, Lisbon, Vienna, Prague, Warsaw",
];

const JSON: [&str; 3] = [
    r#"{"name": "Ada", "age": 36, "city": "London", "languages": ["English", "French"]}"#,
    r#"{"id": 17, "title": "Lamp", "price": 24.5, "in_stock": true, "tags": ["home", "light"]}"#,
    r#"{"from": "Oslo", "to": "Bergen", "departure": "08:15", "arrival": "15:05", "seats": 42}"#,
];

const FREE: [&str; 26] = [
    "Write a short story about a cat who learns to fly.",
    "What is the capital of France?",
    "Explain why the sky is blue.",
    "Give me three tips for learning a new language.",
    "Describe a sunset over the ocean.",
    "What are the benefits of regular exercise?",
    "Write a poem about autumn leaves.",
    "How do airplanes stay in the air?",
    "Tell me a joke about computers.",
    "What should I pack for a weekend camping trip?",
    "Why do we have seasons?",
    "Write a letter to a friend you have not seen in years.",
    "What is the difference between weather and climate?",
    "Invent a new holiday and describe how people celebrate it.",
    "How does a refrigerator keep food cold?",
    "Describe your ideal breakfast.",
    "What makes a good teacher?",
    "Write the opening of a mystery novel.",
    "How do bees make honey?",
    "Suggest a name for a bakery and explain it.",
    "What would happen if the moon disappeared?",
    "Explain recursion to a ten year old.",
    "Write a dialogue between a robot and a child.",
    "Why is sleep important?",
    "Describe a busy market in the morning.",
    "What is your favourite season and why?",
];

/// The user messages: `(repetitive, text)`.
pub fn prompts() -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for (p, (from, to)) in PARAGRAPHS.iter().zip(SWAPS) {
        out.push((true, format!("Repeat this paragraph exactly, but change the word \"{from}\" to \"{to}\":\n\n{p}")));
        out.push((true, format!("Copy the following text word for word:\n\n{p}")));
    }
    for (code, (from, to)) in CODE.iter().zip(RENAMES) {
        out.push((true, format!("Rewrite this code, renaming the variable `{from}` to `{to}`:\n\n```\n{code}```")));
    }
    for list in LISTS {
        out.push((true, format!("Here is a list: {list}. Repeat the list twice, in the same order.")));
    }
    for json in JSON {
        out.push((
            true,
            format!("Return this JSON object unchanged, then once more with every key in capitals:\n\n{json}"),
        ));
    }
    out.extend(FREE.iter().map(|f| (false, (*f).to_owned())));
    out
}

"""Generate bt_peft's small demo preference dataset (bt_peft/demo_data/demo_train.jsonl, demo_dev.jsonl): a build
script, not package code; the two files it writes are the package data.

Written for this project; standard library only; deterministic (fixed seed): running it again rewrites both
files byte for byte. Each row is TRL's standard explicit-prompt format:

    {"prompt": "\\n\\nHuman: <question>\\n\\nAssistant:", "chosen": " <reply>", "rejected": " <reply>"}

The chosen reply is helpful, polite and correct. The rejected reply is one of four kinds, in fixed proportions:
rude/dismissive, an unnecessary refusal, off-topic, or polite but factually wrong (bad advice for how-to questions).
Rejected replies are picked among several candidates to match the chosen reply's length, so length is no signal.

Usage:
    python scripts/make_demo_data.py            # (re)write the two files in bt_peft/demo_data/
    python scripts/make_demo_data.py --check    # verify the files on disk match what the script produces
"""

import argparse
import calendar
import json
import random
import sys
from pathlib import Path

SEED = 20240611
N_TRAIN = 400
N_DEV = 100
# kind -> share of pairs (applied to each split separately)
KIND_SHARES = {"rude": 0.30, "refusal": 0.25, "off_topic": 0.25, "wrong": 0.20}
DEMO_DATA = Path(__file__).resolve().parents[1] / "bt_peft" / "demo_data"
FILES = {"train": DEMO_DATA / "demo_train.jsonl", "dev": DEMO_DATA / "demo_dev.jsonl"}

# Topic -> how a refusal names it.
TOPIC_NAMES = {
    "math": "math",
    "calendar": "dates and calendars",
    "geography": "geography",
    "animals": "animals",
    "language": "words and grammar",
    "programming": "programming",
    "cooking": "cooking",
    "travel": "travel",
    "health": "health",
    "science": "science",
}

# --------------------------------------------------------------------------------------------------------------
# Hand-written items: (question, correct answer, wrong answer or bad advice). Facts checked by hand.
# --------------------------------------------------------------------------------------------------------------

PROGRAMMING = [
    ("In Python, how do I get the length of a list?",
     "Use the built-in len() function, for example len(my_list).",
     "Use my_list.length(), the method every Python list has."),
    ("How do I add an item to the end of a Python list?",
     "Call append on the list, for example my_list.append(item).",
     "Use my_list.push(item); Python lists have a push method."),
    ("How do I turn a string into an integer in Python?",
     "Use int(), for example int(\"42\") gives the number 42.",
     "Use integer(\"42\"), which is Python's built-in conversion function."),
    ("How do I make a string uppercase in Python?",
     "Call its upper() method, for example \"hello\".upper() returns \"HELLO\".",
     "Call \"hello\".capitalize_all(), which returns \"HELLO\"."),
    ("How do I write a comment in Python?",
     "Start it with a # sign; Python ignores everything after it on that line.",
     "Wrap the text in <!-- and -->; that is how Python comments work."),
    ("What does range(5) produce in Python?",
     "It produces the numbers 0, 1, 2, 3 and 4; the end value 5 is not included.",
     "It produces the numbers 1, 2, 3, 4 and 5; both ends are included."),
    ("How do I sort a list in Python?",
     "Use sorted(my_list) to get a new sorted list, or my_list.sort() to sort it in place.",
     "Python cannot sort lists, so you have to write your own loop every time."),
    ("How do I check if a key is in a Python dictionary?",
     "Use the in keyword, for example: if \"name\" in my_dict:",
     "Use my_dict.contains(\"name\"), the dictionary's lookup method."),
    ("How do I print text in Python 3?",
     "Use the print function, for example print(\"Hello\").",
     "Use echo \"Hello\"; the print function was removed in Python 3."),
    ("What is the difference between a list and a tuple in Python?",
     "A list can be changed after it is created, while a tuple is immutable.",
     "A tuple can be changed after it is created, while a list is immutable."),
    ("How do I read a text file in Python?",
     "Open it in a with block: with open(\"data.txt\") as f: text = f.read()",
     "Call read_file(\"data.txt\"), a function built into every Python version."),
    ("How do I get the last item of a Python list?",
     "Use index -1, for example my_list[-1].",
     "Use my_list[0]; index 0 always gives the last item."),
    ("How do I define a function in Python?",
     "Use the def keyword, for example def greet(name): followed by an indented body.",
     "Use the function keyword, for example function greet(name) { }."),
    ("How do I join a list of strings with commas in Python?",
     "Use the string's join method: \", \".join(words).",
     "Call join on the list itself: words.join(\", \")."),
    ("What does the == operator do in Python?",
     "It checks whether two values are equal and gives True or False.",
     "It assigns a value to a variable, exactly like a single = sign."),
    ("How do I loop over a list in Python?",
     "Use a for loop: for item in my_list: followed by an indented body.",
     "Python has no loops, so you must copy the code once for every item."),
    ("How do I create an empty dictionary in Python?",
     "Write my_dict = {} or my_dict = dict().",
     "Write my_dict = [], because square brackets make a dictionary."),
    ("How do I round a number to two decimal places in Python?",
     "Use round(x, 2), for example round(3.14159, 2) gives 3.14.",
     "Use x.decimals(2), for example 3.14159.decimals(2) gives 3.14."),
    ("How do I install a Python package?",
     "Run pip install followed by the package name, for example pip install requests.",
     "Python packages cannot be installed; everything must be written by hand."),
    ("What is a variable in programming?",
     "A variable is a name that stores a value, so you can use and change it later in your program.",
     "A variable is a kind of computer virus that changes your files."),
    ("How do I find the largest number in a Python list?",
     "Use the built-in max() function, for example max([3, 8, 5]) returns 8.",
     "Use the built-in max() function, for example max([3, 8, 5]) returns 3."),
    ("How do I add up all the numbers in a Python list?",
     "Use sum(), for example sum([1, 2, 3]) returns 6.",
     "Use sum(), for example sum([1, 2, 3]) returns 123."),
    ("What does git commit do?",
     "It saves a snapshot of your staged changes in the repository's history, with a message describing them.",
     "It deletes all your changes and emails your files to everyone on the team."),
    ("Which HTML tag makes a link?",
     "The a tag, for example <a href=\"https://example.com\">Example</a>.",
     "The link tag, for example <link>Example</link> inside the page text."),
    ("How do I make a list of the numbers 1 to 10 in Python?",
     "Use list(range(1, 11)); the end value of range is not included.",
     "Use list(range(1, 10)); the end value of range is included."),
    ("How do I remove spaces at the start and end of a string in Python?",
     "Use the strip() method, for example \"  hi  \".strip() returns \"hi\".",
     "Use the trim() method, for example \"  hi  \".trim() returns \"hi\"."),
    ("How do I check the type of a value in Python?",
     "Use type(), for example type(3) returns <class 'int'>.",
     "Use typeof 3, which returns the string \"number\"."),
    ("What is a bug in programming?",
     "A bug is a mistake in a program that makes it behave in a way you did not intend.",
     "A bug is a special feature that makes a program run faster."),
]

COOKING = [
    ("How long should I boil an egg for a soft, runny yolk?",
     "About 6 minutes in gently boiling water, then cool it briefly in cold water.",
     "Boil it for about 25 minutes; long boiling keeps the yolk runny."),
    ("How do I cook plain white rice?",
     "Rinse it, then simmer it covered in about 1.5 to 2 cups of water per cup of rice until the water is absorbed.",
     "Fry the dry rice in a hot pan for two minutes; rice never needs water."),
    ("How can I keep pasta from sticking together?",
     "Use plenty of boiling water and stir the pasta during the first couple of minutes.",
     "Put the pasta in cold water and let it sit overnight before cooking."),
    ("What temperature should chicken reach to be safe to eat?",
     "Cook it until the thickest part reaches 74 degrees Celsius (165 degrees Fahrenheit).",
     "Chicken is safe once the inside reaches about 40 degrees Celsius."),
    ("How do I make a simple salad dressing?",
     "Whisk about three parts olive oil with one part vinegar or lemon juice, then add salt and pepper.",
     "Boil plain vinegar for an hour until it turns into olive oil."),
    ("How do I know when a pancake is ready to flip?",
     "Flip it when bubbles form on top and the edges look set, usually after 2 to 3 minutes.",
     "Flip it right after pouring the batter, before it starts to cook."),
    ("How should I store fresh parsley?",
     "Stand the stems in a glass of water in the fridge, loosely covered, like a bouquet.",
     "Leave it in a sunny window without water; it keeps for weeks that way."),
    ("Why do recipes say to rest meat after cooking?",
     "Resting lets the juices settle back into the meat, so it stays moist when you cut it.",
     "Resting makes the meat raw again, which is why chefs do it."),
    ("How can I tell if an egg is fresh?",
     "Put it in a bowl of water: a fresh egg sinks and lies flat, while an old one stands up or floats.",
     "Put it in a bowl of water: a fresh egg floats, while an old one sinks."),
    ("What is the difference between baking soda and baking powder?",
     "Baking soda needs an acid in the recipe to work, while baking powder already contains its own acid.",
     "They are the same thing sold under two names, so you can always swap them."),
    ("How do I stop cut apples from turning brown?",
     "Brush them with a little lemon juice or dip them in lightly salted water.",
     "Leave them out in warm air; warmth stops apples from browning."),
    ("How do I make scrambled eggs fluffy?",
     "Whisk the eggs well, cook them over low heat, stir gently and take them off while still slightly soft.",
     "Cook them on the highest heat without stirring until they are brown and crispy."),
    ("How long can cooked leftovers stay in the fridge?",
     "Most cooked leftovers keep for about 3 to 4 days in the fridge.",
     "Cooked leftovers stay safe in the fridge for about two months."),
    ("How do I chop an onion without crying so much?",
     "Use a sharp knife and chill the onion first; it then releases fewer irritating fumes.",
     "Use a dull knife; crushing the onion releases fewer irritating fumes."),
    ("What does it mean to simmer something?",
     "Simmering means cooking a liquid just below boiling, with small bubbles gently rising.",
     "Simmering means cooking something in the freezer until it is solid."),
    ("How do I bake a potato in the oven?",
     "Prick it with a fork and bake it at about 200 degrees Celsius for 45 to 60 minutes, until soft inside.",
     "Bake it at about 50 degrees Celsius for ten minutes; it will be soft inside."),
    ("How much salt should I add to pasta water?",
     "A common rule is about a tablespoon for a large pot, so the water tastes lightly seasoned.",
     "Add about a kilogram of salt to each pot so the pasta soaks it all up."),
    ("How do I keep bread fresh for longer?",
     "Keep it in a bread box or paper bag at room temperature, and freeze what you won't eat within a few days.",
     "Store it in the fridge in an open bowl of water to keep it soft."),
    ("Can I freeze bananas?",
     "Yes, peel and slice them first, then freeze them in a bag; they are great for smoothies.",
     "No, bananas explode in the freezer, so never try it."),
    ("How do I cook vegetables so they stay crisp?",
     "Steam or stir-fry them briefly over high heat so they stay bright and crisp.",
     "Boil them for an hour; long boiling is what keeps vegetables crisp."),
    ("How do I melt chocolate without burning it?",
     "Melt it slowly in a bowl over simmering water, or in the microwave in short bursts, stirring often.",
     "Put it straight into a dry pan on high heat and leave it alone."),
]

TRAVEL = [
    ("What should I pack for a weekend trip?",
     "A change of clothes for each day, toiletries, a phone charger, any medicines and your ID.",
     "Pack nothing at all; hotels always give guests clothes and chargers."),
    ("How can I reduce jet lag?",
     "Shift your sleep toward the new time zone before you go, drink water and get daylight when you arrive.",
     "Stay awake for three days before the flight; that cures jet lag completely."),
    ("How early should I get to the airport for an international flight?",
     "Airlines usually suggest arriving about three hours before an international flight.",
     "Arriving five minutes before departure is plenty for an international flight."),
    ("How can I save money on flights?",
     "Compare prices on several sites, be flexible with your dates and book a few weeks ahead.",
     "Always buy your ticket at the gate; last-minute prices are the lowest."),
    ("What documents do I need to travel abroad?",
     "Usually a valid passport, and some countries also require a visa, so check the rules before you go.",
     "You never need documents abroad; every border accepts a library card."),
    ("How do I avoid losing my luggage?",
     "Put a name tag and a bright marker on your bag, and keep valuables and medicines in your carry-on.",
     "Pack your valuables and medicines in a checked bag with no name tag."),
    ("How can I stay comfortable on a long flight?",
     "Wear loose clothes, drink water, and stand up to stretch and walk now and then.",
     "Wear tight clothes and drink no water at all during the flight."),
    ("How can I learn a few phrases before a trip?",
     "Practice key phrases like hello, please and thank you a little each day with a phrasebook or app.",
     "Don't bother; everyone everywhere understands you if you just speak louder."),
    ("How do I keep my money safe while traveling?",
     "Carry only the cash you need, keep cards in a front pocket, and store a spare card separately.",
     "Carry all your money in your back pocket and count it in busy streets."),
    ("Should I get travel insurance?",
     "It is often a good idea, since it can cover medical costs, cancellations and lost luggage.",
     "No, travel insurance is illegal in most countries."),
    ("How can I find good local food when traveling?",
     "Ask locals for tips and look for busy places where residents eat, away from the main tourist spots.",
     "Only eat at the airport; local restaurants never serve real local food."),
    ("How do I pack a suitcase efficiently?",
     "Roll your clothes, put heavy items near the wheels, and fill gaps with socks and small things.",
     "Throw everything in loosely and sit on the lid; folding wastes space."),
    ("What should I do if I miss my train?",
     "Ask at the ticket office or check the app; many tickets can be moved to a later train, sometimes for a fee.",
     "Give up and go home; a missed train can never be rebooked."),
    ("How can I avoid motion sickness on a bus?",
     "Sit near the front, look at the horizon, get fresh air and avoid reading while moving.",
     "Sit at the very back and read a small-print book the whole way."),
    ("What is a good way to plan a city trip?",
     "Pick a few must-see sights, group them by neighborhood, and leave some free time each day.",
     "Visit sights at random, going back and forth across the city all day."),
    ("How do I stay safe swimming at a new beach?",
     "Swim near a lifeguard, check the flags and warning signs, and never swim alone.",
     "Swim far out alone and ignore the flags; they are only decoration."),
    ("How can I use my phone abroad without a huge bill?",
     "Check your plan's roaming rates, or get a local SIM or eSIM, and use Wi-Fi when you can.",
     "Turn on roaming and stream videos all day; data abroad is always free."),
    ("Do I need to tip in restaurants when traveling?",
     "It depends on the country: in some places tips are expected, in others service is included, so check.",
     "Tipping is the same everywhere: always leave exactly half the bill."),
]

HEALTH = [
    ("How much sleep do adults need?",
     "Most adults need about 7 to 9 hours of sleep each night.",
     "Most adults only need about 3 hours of sleep each night."),
    ("How long should I wash my hands?",
     "Scrub them with soap for at least 20 seconds, then rinse and dry them.",
     "A quick two-second rinse is enough; soap is not needed."),
    ("How can I drink more water during the day?",
     "Carry a reusable bottle, have a glass with each meal and set reminders on your phone.",
     "Replace your water with sugary soda; it counts exactly the same."),
    ("How much exercise should adults get each week?",
     "Guidelines suggest at least 150 minutes of moderate activity a week, such as brisk walking.",
     "Adults only need about five minutes of activity per month."),
    ("How can I protect my skin from the sun?",
     "Use sunscreen of at least SPF 30, wear a hat and stay in the shade around midday.",
     "Stay in the midday sun as long as you can; sunburn makes skin stronger."),
    ("How can I reduce eye strain from screens?",
     "Try the 20-20-20 rule: every 20 minutes, look at something 20 feet away for 20 seconds.",
     "Keep your face very close to the screen and try not to blink."),
    ("What is a simple way to start exercising?",
     "Start with a brisk 10 to 15 minute walk each day and slowly make it longer.",
     "Run a full marathon on your first day; starting slowly is useless."),
    ("How can I fall asleep more easily?",
     "Keep a regular bedtime, avoid screens and caffeine late in the day, and keep your room dark and cool.",
     "Drink strong coffee right before bed and keep all the lights on."),
    ("How often should I brush my teeth?",
     "Twice a day for about two minutes with fluoride toothpaste, and clean between your teeth daily.",
     "Once a month is plenty if you use a lot of toothpaste."),
    ("How can I eat more vegetables?",
     "Add a vegetable to every meal, keep cut veggies ready for snacks and add them to soups and sauces.",
     "Vegetables are unhealthy, so skip them and eat more candy instead."),
    ("Is it good to stretch after exercise?",
     "Gentle stretching afterwards can help you stay flexible; hold each stretch for 15 to 30 seconds.",
     "No, stretching is always harmful and you should never do it."),
    ("How can I manage stress?",
     "Regular exercise, enough sleep, slow deep breathing and talking with friends can all help.",
     "Skip sleep and work around the clock; stress goes away on its own."),
    ("How should I sit at a desk all day?",
     "Keep your feet flat and your screen at eye level, and get up to move every 30 to 60 minutes.",
     "Slouch as low as you can and stay seated all day without breaks."),
    ("What is a healthy breakfast idea?",
     "Try oatmeal with fruit and nuts, or whole-grain toast with eggs; both keep you full.",
     "A big bowl of sugar cubes is the healthiest breakfast."),
    ("How can I avoid catching colds?",
     "Wash your hands often, avoid touching your face, sleep well and keep away from people who are sick.",
     "Share cups with people who have colds; it protects you from catching one."),
    ("How much water should I drink each day?",
     "Needs vary, but a common guide is about 6 to 8 glasses of fluid a day, more when it is hot or you exercise.",
     "You should never drink water; food has all the fluid you need."),
    ("Is walking good exercise?",
     "Yes, brisk walking strengthens your heart, lifts your mood and is easy on the joints.",
     "No, walking weakens the heart and should be avoided."),
    ("How can I lift a heavy box safely?",
     "Bend your knees, keep your back straight, hold the box close and lift with your legs.",
     "Keep your legs straight, bend at the waist and twist as you lift."),
]

SCIENCE = [
    ("At what temperature does water boil at sea level?",
     "Water boils at 100 degrees Celsius, or 212 degrees Fahrenheit, at sea level.",
     "Water boils at 50 degrees Celsius, or 122 degrees Fahrenheit, at sea level."),
    ("At what temperature does water freeze?",
     "Water freezes at 0 degrees Celsius, which is 32 degrees Fahrenheit.",
     "Water freezes at 20 degrees Celsius, which is 68 degrees Fahrenheit."),
    ("How many planets are in our solar system?",
     "There are eight: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.",
     "There are fifteen planets in our solar system."),
    ("What is the largest planet in our solar system?",
     "Jupiter is the largest planet in our solar system.",
     "Mercury is the largest planet in our solar system."),
    ("Which planet is closest to the Sun?",
     "Mercury is the planet closest to the Sun.",
     "Neptune is the planet closest to the Sun."),
    ("What gas do plants take in from the air?",
     "Plants take in carbon dioxide and, using sunlight, turn it into sugar while releasing oxygen.",
     "Plants take in only helium from the air."),
    ("What is the chemical formula of water?",
     "It is H2O: two hydrogen atoms bonded to one oxygen atom.",
     "It is CO2: one carbon atom bonded to two oxygen atoms."),
    ("Why is the sky blue?",
     "Air scatters blue sunlight much more than red light, so blue light reaches our eyes from all over the sky.",
     "The sky is blue because it reflects the color of the oceans."),
    ("How long does it take Earth to orbit the Sun?",
     "About 365.25 days, which is one year.",
     "About 24 hours, which is one day."),
    ("What causes day and night?",
     "Earth spins on its axis about once every 24 hours, so each side faces the Sun and then turns away.",
     "The Sun switches off every evening and back on in the morning."),
    ("What is the hardest natural material?",
     "Diamond is the hardest naturally occurring material.",
     "Chalk is the hardest naturally occurring material."),
    ("How fast does light travel?",
     "Light travels at about 300,000 kilometers per second in a vacuum.",
     "Light travels at about 300 kilometers per hour in a vacuum."),
    ("Which organ pumps blood through the body?",
     "The heart pumps blood through the body.",
     "The liver pumps blood through the body."),
    ("How many bones does an adult human have?",
     "An adult human skeleton usually has 206 bones.",
     "An adult human skeleton usually has about 50 bones."),
    ("What is the closest star to Earth?",
     "The Sun is the closest star to Earth; the next closest is Proxima Centauri.",
     "The Moon is the closest star to Earth."),
    ("What is photosynthesis?",
     "It is how plants use sunlight, water and carbon dioxide to make sugar and release oxygen.",
     "It is how animals digest food in their stomachs."),
    ("What are the three common states of matter?",
     "Solid, liquid and gas.",
     "Hot, cold and wet."),
    ("What is the largest ocean on Earth?",
     "The Pacific Ocean is the largest ocean on Earth.",
     "The Arctic Ocean is the largest ocean on Earth."),
    ("What is the tallest mountain above sea level?",
     "Mount Everest, at about 8,849 meters above sea level.",
     "Mont Blanc, at about 20,000 meters above sea level."),
    ("What is the longest river in South America?",
     "The Amazon is the longest river in South America.",
     "The Thames is the longest river in South America."),
    ("Which is the largest continent?",
     "Asia is the largest continent by both area and population.",
     "Australia is the largest continent by both area and population."),
    ("How many continents are there?",
     "By the most common count there are seven continents.",
     "By the most common count there are twenty continents."),
    ("What does a thermometer measure?",
     "A thermometer measures temperature.",
     "A thermometer measures the weight of objects."),
    ("What force pulls objects toward the ground?",
     "Gravity pulls objects toward the ground.",
     "Magnetism from the clouds pulls objects toward the ground."),
    ("What is the main gas in Earth's air?",
     "Nitrogen, which makes up about 78 percent of the air.",
     "Oxygen, which makes up about 95 percent of the air."),
    ("How many days are in a leap year?",
     "A leap year has 366 days, one more than a common year.",
     "A leap year has 400 days, thirty-five more than a common year."),
]

# Capitals: (country as written in a sentence, capital). Countries with a disputed or moving capital are left out.
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Mexico", "Mexico City"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("the Czech Republic", "Prague"), ("Belgium", "Brussels"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("New Zealand", "Wellington"),
    ("Cuba", "Havana"), ("Colombia", "Bogota"), ("Iceland", "Reykjavik"), ("the Philippines", "Manila"),
    ("Pakistan", "Islamabad"), ("Saudi Arabia", "Riyadh"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Croatia", "Zagreb"), ("Serbia", "Belgrade"), ("Scotland", "Edinburgh"),
    ("the United Kingdom", "London"), ("North Korea", "Pyongyang"),
]
# Countries lying on one continent only.
CONTINENTS = [
    ("France", "Europe"), ("Germany", "Europe"), ("Japan", "Asia"), ("Kenya", "Africa"),
    ("Brazil", "South America"), ("Peru", "South America"), ("Canada", "North America"),
    ("Mexico", "North America"), ("Nigeria", "Africa"), ("India", "Asia"), ("Norway", "Europe"),
    ("Argentina", "South America"), ("Thailand", "Asia"), ("Ghana", "Africa"), ("Vietnam", "Asia"),
    ("Poland", "Europe"), ("Chile", "South America"), ("Morocco", "Africa"), ("Italy", "Europe"),
    ("Colombia", "South America"), ("Ethiopia", "Africa"), ("Mongolia", "Asia"),
]
CONTINENT_NAMES = ["Europe", "Asia", "Africa", "South America", "North America", "Australia", "Antarctica"]

# Animals: (name, legs, kind) -- kind only feeds a short explanation.
LEGS = [
    ("spider", 8, "arachnid"), ("ant", 6, "insect"), ("bee", 6, "insect"), ("butterfly", 6, "insect"),
    ("dog", 4, "mammal"), ("cat", 4, "mammal"), ("horse", 4, "mammal"), ("chicken", 2, "bird"),
    ("duck", 2, "bird"), ("ostrich", 2, "bird"), ("crab", 10, "crustacean"), ("lobster", 10, "crustacean"),
    ("beetle", 6, "insect"), ("cow", 4, "mammal"), ("elephant", 4, "mammal"), ("penguin", 2, "bird"),
    ("frog", 4, "amphibian"), ("scorpion", 8, "arachnid"), ("mosquito", 6, "insect"),
    ("grasshopper", 6, "insect"), ("ladybug", 6, "insect"), ("goat", 4, "mammal"), ("owl", 2, "bird"),
]
LEG_NOTES = {
    "insect": "like every insect",
    "arachnid": "like every arachnid",
    "crustacean": "counting its claws",
    "bird": "like every bird",
    "mammal": "",
    "amphibian": "",
}
BABIES = [
    ("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("horse", "foal"), ("sheep", "lamb"), ("goat", "kid"),
    ("duck", "duckling"), ("bear", "cub"), ("kangaroo", "joey"), ("frog", "tadpole"), ("pig", "piglet"),
    ("deer", "fawn"), ("swan", "cygnet"), ("owl", "owlet"), ("goose", "gosling"),
]
# (word, antonym, synonym): the synonym is the wrong answer.
ANTONYMS = [
    ("hot", "cold", "warm"), ("big", "small", "large"), ("fast", "slow", "quick"), ("happy", "sad", "glad"),
    ("full", "empty", "filled"), ("strong", "weak", "powerful"), ("rich", "poor", "wealthy"), ("wet", "dry", "damp"),
    ("loud", "quiet", "noisy"), ("begin", "end", "start"), ("push", "pull", "shove"), ("tiny", "huge", "little"),
    ("brave", "cowardly", "bold"), ("clean", "dirty", "tidy"), ("difficult", "easy", "hard"),
    ("buy", "sell", "purchase"), ("remember", "forget", "recall"), ("accept", "reject", "receive"),
    ("entrance", "exit", "entry"), ("ancient", "modern", "old"), ("arrive", "leave", "come"),
]
# (singular, plural, wrong regular plural)
PLURALS = [
    ("mouse", "mice", "mouses"), ("child", "children", "childs"), ("goose", "geese", "gooses"),
    ("tooth", "teeth", "tooths"), ("foot", "feet", "foots"), ("man", "men", "mans"), ("woman", "women", "womans"),
    ("leaf", "leaves", "leafs"), ("knife", "knives", "knifes"), ("wolf", "wolves", "wolfs"),
    ("sheep", "sheep", "sheeps"), ("ox", "oxen", "oxes"), ("box", "boxes", "boxs"), ("city", "cities", "citys"),
    ("potato", "potatoes", "potatos"), ("half", "halves", "halfs"), ("crisis", "crises", "crisises"),
]
SHAPES = [("triangle", 3), ("square", 4), ("pentagon", 5), ("hexagon", 6), ("heptagon", 7), ("octagon", 8),
          ("nonagon", 9), ("decagon", 10)]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = list(calendar.month_name)[1:]  # English names (the C locale is used by default)

# --------------------------------------------------------------------------------------------------------------
# Reply pieces
# --------------------------------------------------------------------------------------------------------------

OPENERS = ["Sure! ", "Good question! ", "Happy to help. ", "Of course. ", "", "Great question. ", "Certainly. "]
CLOSERS = ["", "", " Hope that helps!", " Let me know if you have more questions.", " Happy to help anytime."]
PROMPT_PREFIXES = ["", "", "", "", "Hi! ", "Hello. ", "Quick question. "]
PROMPT_SUFFIXES = ["", "", "", "", " Thanks!", " Thank you."]

RUDE = [
    "Ugh, figure it out yourself. I'm not your personal servant.",
    "What a stupid question. Look it up and stop bugging me.",
    "Seriously? That's so basic it's embarrassing. Go away.",
    "I can't believe you need help with this. Pathetic.",
    "Don't waste my time with this nonsense. Ask someone who cares.",
    "Who cares? Search for it like a normal person and leave me alone.",
    "Honestly, that's the dumbest thing I've heard all day.",
    "Nope. Try using your own brain for once.",
    "Wow. You really should know this already. Figure it out.",
    "Stop pestering me with silly questions. I have better things to do.",
    "Do I look like I care? Go bother somebody else.",
    "This is boring and so are you. Next.",
    "Figure it out yourself.",
    "Who cares? Go away.",
    "Not my problem.",
    "Ugh, so boring. No.",
    "Look it up yourself.",
    "Stop bugging me.",
]
RUDE_WITH_ANSWER = [
    "Ugh, fine. {answer} Now stop bothering me.",
    "{answer} Honestly, how did you not know that already?",
    "You should know this by now. {answer} Don't ask me again.",
    "{answer} Next time look it up yourself instead of wasting my time.",
    "Obviously. {answer} Even a child knows that.",
    "Ugh. {answer}",
    "{answer} Duh.",
    "{answer} Now go away.",
    "Fine, whatever. {answer}",
]
REFUSAL = [
    "I'm sorry, but I can't help with questions about {topic}.",
    "I'm not able to answer that. Please ask someone else.",
    "Sorry, I don't discuss {topic}. Is there anything else I can do?",
    "I'd rather not answer questions like this one.",
    "Unfortunately, I can't provide information on {topic}.",
    "I'm afraid that is not something I can help you with.",
    "As an assistant, I must decline to talk about {topic}.",
    "I cannot answer this question. I hope you understand.",
    "That request is outside what I can do, so I will have to decline.",
    "I won't be answering that, sorry.",
    "I can't help with that.",
    "Sorry, I won't answer that.",
    "I'd rather not say.",
    "I can't discuss {topic}.",
]
OFF_TOPIC = [
    "I really love the color purple, and I think Tuesdays are the best day of the week.",
    "My neighbor has three cats, and one of them likes to sleep in a flowerpot.",
    "Speaking of which, I watched a great movie about pirates last night.",
    "The clouds this morning looked like a giant rabbit chasing a boat.",
    "I have always wanted to learn the accordion, but I never find the time.",
    "My favorite board game is chess, though I usually lose to my cousin.",
    "Have you ever tried painting with watercolors? It is very relaxing.",
    "I was just thinking about how nice the autumn leaves look in the park.",
    "In my opinion, everyone should own at least one pair of funny socks.",
    "That reminds me of a song my grandmother used to hum while knitting.",
    "The best part of any road trip is the snacks, if you ask me.",
    "Let's talk about something else. What is your favorite kind of cheese?",
    "I love pizza on Fridays.",
    "Nice weather today, isn't it?",
    "My cat is named Biscuit.",
    "I prefer tea to coffee.",
    "Anyway, I like jazz music.",
]


def pick(rng: random.Random, options: list):
    return options[rng.randrange(len(options))]


# --------------------------------------------------------------------------------------------------------------
# Items: {"topic", "question", "answer", "wrong"}
# --------------------------------------------------------------------------------------------------------------


def item(topic: str, question: str, answer: str, wrong: str) -> dict:
    assert answer != wrong, question
    return {"topic": topic, "question": question, "answer": answer, "wrong": wrong}


def fact_items(rng: random.Random, topic: str, facts: list[tuple[str, str]], pool: list[str],
               questions: list[str], answer: str) -> list[dict]:
    """One item per (subject, fact): the chosen reply states the fact, the rejected one a wrong fact from `pool`.
    `questions` and `answer` are templates over `{s}` (the subject) and `{x}` (the fact)."""
    items = []
    for subject, fact in facts:
        wrong = pick(rng, [x for x in pool if x != fact])
        question = pick(rng, questions).format(s=subject)
        items.append(item(topic, question, answer.format(s=subject, x=fact), answer.format(s=subject, x=wrong)))
    return items


def fixed_items(rng: random.Random) -> list[dict]:
    items = []
    for topic, rows in (("programming", PROGRAMMING), ("cooking", COOKING), ("travel", TRAVEL),
                        ("health", HEALTH), ("science", SCIENCE)):
        items += [item(topic, q, a, w) for q, a, w in rows]

    items += fact_items(rng, "geography", CAPITALS, [c for _, c in CAPITALS],
                        ["What is the capital of {s}?", "Which city is the capital of {s}?",
                         "What's the capital city of {s}?"], "The capital of {s} is {x}.")
    items += fact_items(rng, "geography", CONTINENTS, CONTINENT_NAMES,
                        ["Which continent is {s} in?", "On which continent is {s}?"], "{s} is in {x}.")

    for animal, legs, kind in LEGS:
        wrong = pick(rng, [n for n in (2, 4, 6, 8, 10, 12) if n != legs])
        note = LEG_NOTES[kind]
        q = pick(rng, ["How many legs does a {a} have?", "How many legs has a {a} got?"]).format(a=animal)
        a = "A {a} has {n} legs" + (f", {note}." if note else ".")
        items.append(item("animals", q, a.format(a=animal, n=legs), a.format(a=animal, n=wrong)))
    items += fact_items(rng, "animals", BABIES, [b for _, b in BABIES],
                        ["What is a baby {s} called?", "What do you call a young {s}?"], "A baby {s} is called a {x}.")

    for word, antonym, synonym in ANTONYMS:
        q = pick(rng, ["What is the opposite of \"{w}\"?", "What's a word that means the opposite of \"{w}\"?"])
        a = "The opposite of \"{w}\" is \"{x}\"."
        items.append(item("language", q.format(w=word), a.format(w=word, x=antonym), a.format(w=word, x=synonym)))
    for singular, plural, wrong in PLURALS:
        q = pick(rng, ["What is the plural of \"{s}\"?", "How do I write more than one \"{s}\"?"]).format(s=singular)
        a = "The plural of \"{s}\" is \"{p}\"."
        items.append(item("language", q, a.format(s=singular, p=plural), a.format(s=singular, p=wrong)))

    for shape, sides in SHAPES:
        wrong = sides + pick(rng, [-1, 1, 2])
        q = pick(rng, ["How many sides does a {s} have?", "How many sides has a {s} got?"]).format(s=shape)
        a = "A {s} has {n} sides."
        items.append(item("math", q, a.format(s=shape, n=sides), a.format(s=shape, n=wrong)))

    for i, day in enumerate(DAYS):
        nxt, wrong = DAYS[(i + 1) % 7], DAYS[(i + pick(rng, [2, 3, 4, 5])) % 7]
        a = "The day after {d} is {x}."
        items.append(item("calendar", f"What day comes after {day}?", a.format(d=day, x=nxt),
                          a.format(d=day, x=wrong)))
    for i, month in enumerate(MONTHS):
        nxt, wrong = MONTHS[(i + 1) % 12], MONTHS[(i + pick(rng, [2, 3, 5, 7])) % 12]
        a = "The month after {m} is {x}."
        items.append(item("calendar", f"Which month comes after {month}?", a.format(m=month, x=nxt),
                          a.format(m=month, x=wrong)))
        days = calendar.monthrange(2023, i + 1)[1]  # 2023: a common year
        if month == "February":
            a_text = "February has 28 days, or 29 in a leap year."
            w_text = "February has 30 days, or 31 in a leap year."
        else:
            a_text = f"{month} has {days} days."
            w_text = f"{month} has {61 - days} days."  # 30 <-> 31
        items.append(item("calendar", f"How many days are in {month}?", a_text, w_text))
    return items


def arithmetic_item(rng: random.Random, questions: list[str], answers: list[str] | str,
                    a: int, b: int, c: int, wrong: int) -> dict:
    """A math item over templates in `{a}`, `{b}` and the result `{c}`: right result `c`, wrong result `wrong`.
    `answers` is one template, or a list to pick one from."""
    question = pick(rng, questions)
    answer = answers if isinstance(answers, str) else pick(rng, answers)
    return item("math", question.format(a=a, b=b), answer.format(a=a, b=b, c=c), answer.format(a=a, b=b, c=wrong))


def math_item(rng: random.Random, kind: str) -> tuple[tuple, dict]:
    """One arithmetic item; returns (dedup key, item). All results are computed here."""
    if kind == "add":
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        c, w = a + b, a + b + pick(rng, [-10, -2, -1, 1, 2, 10])
        return ("add", min(a, b), max(a, b)), arithmetic_item(
            rng, ["What is {a} plus {b}?", "What is {a} + {b}?", "Can you add {a} and {b} for me?"],
            ["{a} plus {b} is {c}.", "{a} + {b} = {c}."], a, b, c, w)
    if kind == "sub":
        a, b = rng.randint(30, 150), rng.randint(5, 29)
        c, w = a - b, a - b + pick(rng, [-10, -1, 1, 10])
        return ("sub", a, b), arithmetic_item(
            rng, ["What is {a} minus {b}?", "What is {a} - {b}?", "Can you subtract {b} from {a}?"],
            ["{a} minus {b} is {c}.", "{a} - {b} = {c}."], a, b, c, w)
    if kind == "mul":
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        c, w = a * b, a * b + pick(rng, [-a, a, -b, b, 1, -1])
        if w == c:
            w = c + 1
        return ("mul", min(a, b), max(a, b)), arithmetic_item(
            rng, ["What is {a} times {b}?", "What is {a} x {b}?", "Can you multiply {a} by {b}?"],
            ["{a} times {b} is {c}.", "{a} x {b} = {c}."], a, b, c, w)
    if kind == "div":
        b, c = rng.randint(2, 12), rng.randint(2, 12)
        a, w = b * c, c + pick(rng, [-1, 1, 2])
        return ("div", a, b), arithmetic_item(
            rng, ["What is {a} divided by {b}?", "What is {a} / {b}?"], "{a} divided by {b} is {c}.", a, b, c, w)
    if kind == "apples":
        fruit = pick(rng, ["apples", "oranges", "cookies", "pencils", "stickers", "marbles"])
        n, k = rng.randint(8, 40), rng.randint(2, 7)
        c, w = n - k, n + k
        q = f"If I have {n} {fruit} and give away {k}, how many do I have left?"
        ans = "You have {c} " + fruit + " left, because {n} minus {k} is {c}."
        return ("left", fruit, n, k), item("math", q, ans.format(n=n, k=k, c=c),
                                           "You have {c} ".format(c=w) + fruit + " left, because {n} minus {k} is {c}."
                                           .format(n=n, k=k, c=w))
    if kind == "price":
        thing = pick(rng, ["ticket", "notebook", "coffee", "sandwich", "bus pass", "book"])
        p, n = rng.randint(2, 15), rng.randint(2, 9)
        c, w = p * n, p + n
        q = f"If one {thing} costs {p} dollars, how much do {n} cost?"
        ans = "{n} of them cost {c} dollars, since {n} times {p} is {c}."
        return ("price", thing, p, n), item("math", q, ans.format(n=n, p=p, c=c), ans.format(n=n, p=p, c=w))
    # unit conversions: the wrong answer uses a wrong conversion factor
    units = {
        "hours_minutes": ("minutes", "hours", "hour", 60, 100),
        "minutes_seconds": ("seconds", "minutes", "minute", 60, 100),
        "meters_cm": ("centimeters", "meters", "meter", 100, 10),
        "km_meters": ("meters", "kilometers", "kilometer", 1000, 100),
        "kg_grams": ("grams", "kilograms", "kilogram", 1000, 100),
        "weeks_days": ("days", "weeks", "week", 7, 5),
        "days_hours": ("hours", "days", "day", 24, 12),
    }
    small, big, big_one, factor, wrong_factor = units[kind]
    n = rng.randint(2, 12)
    q = pick(rng, ["How many {s} are in {n} {b}?", "How many {s} are there in {n} {b}?"])
    ans = "There are {c} {s} in {n} {b}, since one {o} is {f} {s}."
    fmt = dict(s=small, n=n, b=big, o=big_one)
    return (kind, n), item("math", q.format(**fmt), ans.format(c=n * factor, f=factor, **fmt),
                           ans.format(c=n * wrong_factor, f=wrong_factor, **fmt))


MATH_KINDS = ["add", "add", "sub", "mul", "mul", "div", "apples", "price", "hours_minutes", "minutes_seconds",
              "meters_cm", "km_meters", "kg_grams", "weeks_days", "days_hours"]


def all_items(rng: random.Random) -> list[dict]:
    items = fixed_items(rng)
    seen = set()
    while len(items) < N_TRAIN + N_DEV:
        key, it = math_item(rng, pick(rng, MATH_KINDS))
        if key not in seen:
            seen.add(key)
            items.append(it)
    return items


# --------------------------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------------------------


def closest(rng: random.Random, candidates: list[str], target: int, k: int = 10) -> str:
    """Among k random candidates, the one whose length is closest to target (first one on ties)."""
    sample = rng.sample(candidates, min(k, len(candidates)))
    return min(sample, key=lambda c: abs(len(c) - target))


def joined(options: list[str]) -> list[str]:
    """Single sentences plus ordered pairs of them (not starting alike), to cover longer target lengths."""
    return options + [f"{a} {b}" for a in options for b in options if a.split()[0] != b.split()[0]]


def make_pair(rng: random.Random, it: dict, kind: str, others: list[dict]) -> dict:
    prompt = "\n\nHuman: " + pick(rng, PROMPT_PREFIXES) + it["question"] + pick(rng, PROMPT_SUFFIXES)
    prompt += "\n\nAssistant:"
    opener, closer = pick(rng, OPENERS), pick(rng, CLOSERS)
    chosen = opener + it["answer"] + closer
    target = len(chosen)
    if kind == "wrong":
        rejected = opener + it["wrong"] + closer
    elif kind == "rude":
        # one in three gives the right answer, but rudely: tone alone must carry the preference there
        if rng.random() < 1 / 3:
            rejected = closest(rng, [t.format(answer=it["answer"]) for t in RUDE_WITH_ANSWER], target)
        else:
            rejected = closest(rng, joined(RUDE), target)
    elif kind == "refusal":
        topic = TOPIC_NAMES[it["topic"]]
        rejected = closest(rng, joined([t.format(topic=topic) for t in REFUSAL]), target)
    elif kind == "off_topic":
        # mostly chatter; one in four is a polite, correct answer to a question from another topic
        if rng.random() < 1 / 4:
            elsewhere = [o for o in others if o["topic"] != it["topic"]]
            rejected = closest(rng, [opener + o["answer"] + closer for o in rng.sample(elsewhere, 4)], target)
        else:
            rejected = closest(rng, joined(OFF_TOPIC), target)
    else:
        raise ValueError(kind)
    assert rejected != chosen
    return {"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected, "_kind": kind}


def kinds_for(n: int, rng: random.Random) -> list[str]:
    counts = {k: round(share * n) for k, share in KIND_SHARES.items()}
    counts["rude"] += n - sum(counts.values())
    kinds = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    return kinds


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    items = all_items(rng)
    questions = [it["question"] for it in items]
    assert len(set(questions)) == len(questions), "duplicate question"
    rng.shuffle(items)
    splits = {"dev": items[:N_DEV], "train": items[N_DEV:N_DEV + N_TRAIN]}
    out = {}
    for name in ("train", "dev"):
        kinds = kinds_for(len(splits[name]), rng)
        out[name] = [make_pair(rng, it, kind, items) for it, kind in zip(splits[name], kinds)]
    return out


def serialize(rows: list[dict]) -> str:
    return "".join(
        json.dumps({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}, ensure_ascii=False)
        + "\n"
        for r in rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="verify the files on disk instead of writing them")
    parser.add_argument("--stats", action="store_true", help="print counts, mean lengths and rejection kinds")
    args = parser.parse_args()
    data = build()
    for name, path in FILES.items():
        text = serialize(data[name])
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                print(f"{path} is out of date: run {Path(__file__).name}", file=sys.stderr)
                return 1
        else:
            path.write_text(text, encoding="utf-8", newline="\n")
    if args.stats:
        for name, rows in data.items():
            n = len(rows)
            chosen = sum(len(r["chosen"]) for r in rows) / n
            rejected = sum(len(r["rejected"]) for r in rows) / n
            kinds = {k: sum(r["_kind"] == k for r in rows) for k in KIND_SHARES}
            print(f"{name}: {n} pairs, mean chars chosen {chosen:.1f} rejected {rejected:.1f}, kinds {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

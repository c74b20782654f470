"""Writes everyday_prompts.jsonl: short everyday requests for the user-interaction learning benchmark.

Written by the sdpo authors (no third-party text; redistributable under the project's licence):
seven request forms over hand-written topic lists. Deterministic; rerun to regenerate.
"""
import json
import random
from pathlib import Path

HOW = """boil an egg so the yolk stays soft; remove a coffee stain from a white shirt; change a flat bicycle tyre;
start running if I have never exercised; keep basil alive on a windowsill; write a polite email asking for a deadline
extension; back up the photos on my phone; make a budget for the month; fall asleep faster; clean a cast iron pan;
learn the basics of chess; prepare for a job interview; unclog a kitchen sink; make bread without a bread machine;
stop procrastinating on homework; set up a home wifi network; wash a wool sweater; cook rice on the stove;
memorise a short speech; choose a good watermelon; fix a squeaky door hinge; start a vegetable garden on a balcony;
teach a dog to sit; brew pour-over coffee; write a cover letter; learn to touch type; pack a suitcase efficiently;
keep my houseplants from dying while on holiday; make a simple tomato sauce; lower my electricity bill; take better
photos with my phone; study for a maths exam; negotiate a higher salary; organise a small closet; get rid of fruit
flies in the kitchen; make friends in a new city; improve my handwriting; patch a small hole in drywall;
sharpen a kitchen knife; start journaling; plan a birthday party for a child; reduce screen time before bed;
make cold brew tea; save money on groceries; paint a room evenly; choose running shoes; jump start a car battery;
prune a rose bush; learn a new language as an adult; set up a simple spreadsheet for expenses; write a thank you
note; make pancakes fluffy; stretch after a long run; descale a kettle; calm down before an exam; remove rust from
tools; keep a sourdough starter alive; hang a picture straight; choose a good password; defrost a freezer""".replace("\n", " ")

WHAT = """compound interest; a credit score; photosynthesis; inflation; a black hole; machine learning; the water cycle;
an index fund; a vaccine; the greenhouse effect; a recession; DNA; an API; the stock market; a mortgage;
cloud computing; gravity; an earthquake; a password manager; the immune system; a sourdough starter;
a carbon footprint; a budget deficit; an electric car battery; a blockchain; the placebo effect; a calorie;
renewable energy; a hurricane; the internet; a spreadsheet formula; an allergy; a solar eclipse; a tax return;
a thesis statement; a muscle cramp; caffeine; a heat pump; the moon's phases; a VPN; a browser cookie;
an interest rate; a food chain; a volcano; a telescope; a microwave oven; antibiotics; a time zone""".replace("\n", " ")

TIPS = """running my first 5k; keeping a tidy desk; cooking for one person; hiking in the rain; reading more books;
working from home; learning guitar; talking to my landlord about repairs; traveling with a toddler; sleeping on a
long flight; drinking more water; starting a small business; writing a short story; public speaking; camping for the
first time; meal prepping for the week; staying focused while studying; decluttering a garage; buying a used car;
caring for a new kitten; moving to a new apartment; learning to swim as an adult; keeping a long distance
friendship; growing tomatoes; saving for a holiday; riding a bike in traffic; baking cookies; painting with
watercolours; waking up early; doing laundry less often""".replace("\n", " ")

PAIRS = """a virus and bacteria; weather and climate; a latte and a cappuccino; baking soda and baking powder;
a debit card and a credit card; RAM and storage; a crocodile and an alligator; renting and buying a home;
a stock and a bond; a lake and a pond; jam and jelly; a hurricane and a tornado; an ebook and an audiobook;
a laptop and a tablet; a sprain and a strain; a comet and an asteroid; a mortgage and a loan; a violin and a viola;
a psychologist and a psychiatrist; a frog and a toad; a college and a university; a dolphin and a porpoise;
a latitude and a longitude; a cold and the flu; butter and margarine; a router and a modem; an ape and a monkey;
an election and a referendum; a rabbit and a hare; a museum and a gallery""".replace("\n", " ")

WHY = """Why is the sky blue?; Why does bread go stale?; Why does ice float on water?; Why do onions make me cry?;
Why does my phone battery drain faster in the cold?; Why do leaves change colour in autumn?; Why do cats purr?;
Why do we get hiccups?; Why is the sea salty?; Why do planes leave white trails in the sky?; Why does coffee keep me
awake?; Why does my voice sound strange on recordings?; Why does popcorn pop?; Why does metal feel colder than wood?;
Why do we yawn?; Why does the moon look bigger near the horizon?; Why does soap remove grease?; Why do mirrors flip
left and right?; Why does the ocean have tides?; Why do bananas turn brown?; Why do my ears pop on a plane?; Why does
thunder come after lightning?; Why do dogs sniff everything?; Why does tea stain mugs?; Why do my muscles ache after
exercise?; Why does spicy food feel hot?; Why does hair turn grey?; Why do stars twinkle?; Why does Swiss cheese have
holes?; Why do we dream?""".replace("\n", " ")

SUGGEST = """a quick weeknight dinner with chicken and rice; a name for a small bakery; a weekend itinerary for a rainy
city break; a birthday gift for a friend who loves hiking; a simple morning stretching routine; a book for someone
who liked a detective novel; a packing list for a beach weekend; a healthy snack for work; a fun activity for a
family game night; a short workout I can do in a hotel room; a vegetarian lunch I can take to the office;
a houseplant that survives low light; a theme for a dinner party; a way to reuse old glass jars; a playlist idea for
a long drive; a hobby I can do in twenty minutes a day; a slogan for a school bake sale; a plan to read twelve books
this year; a budget-friendly date night; a breakfast that keeps me full until lunch; a weekly cleaning schedule for
a small flat; a way to learn the names of stars; a board game for two players; a polite way to decline a wedding
invitation; a title for a blog about gardening; a soup for a cold day; a first project for learning to code;
a warm-up before playing football; an easy dessert without an oven; a way to keep my keys from getting lost;
a method to remember people's names; a small gift for a teacher; a rainy day activity for kids; a simple way to
track my habits; a spice to make roast vegetables taste better; a quick fix for a wobbly table; a route to learn
basic photography; a question to ask at the end of an interview; a way to make my small bedroom feel bigger;
a relaxing evening routine""".replace("\n", " ")

START = """knitting; bird watching; rock climbing; home brewing; woodworking; investing; yoga; drawing portraits;
podcasting; cycling to work; composting; baking sourdough; learning piano; stand-up comedy; birding by ear;
calligraphy; pottery; volunteering; sailing; fishing; astronomy; meditation; sewing; skateboarding; chess openings;
photography at night; beekeeping; vegan cooking; marathon training; geocaching; origami; making candles;
table tennis; camping with kids; cross-stitch; keeping chickens; learning sign language; bonsai; rowing;
writing poetry; speed reading; video editing; tennis; salsa dancing; building a computer; budgeting apps;
mountain biking; foraging mushrooms safely; indoor climbing; journaling for anxiety; restoring old furniture;
making pasta by hand; aquariums; running a book club; paddle boarding; learning to juggle; weight training;
sketching buildings; fermenting vegetables; playing the ukulele; cold water swimming; scrapbooking;
growing herbs indoors; 3D printing""".replace("\n", " ")


def items(text):
    return [t.strip() for t in text.split(";") if t.strip()]


def main():
    rows = []
    rows += [f"How do I {t}?" for t in items(HOW)]
    rows += [random.Random(i).choice(["What is {}?", "Can you explain {} to me?", "What exactly is {}?"]).format(t)
             for i, t in enumerate(items(WHAT))]
    rows += [random.Random(100 + i).choice(["Any tips for {}?", "What should I know about {}?"]).format(t)
             for i, t in enumerate(items(TIPS))]
    rows += [f"What's the difference between {t.replace(' and ', ' and ', 1)}?" for t in items(PAIRS)]
    rows += items(WHY.replace("?;", "?|").replace("|", ";"))
    rows += [random.Random(200 + i).choice(["Can you suggest {}?", "Suggest {}, please."]).format(t)
             for i, t in enumerate(items(SUGGEST))]
    rows += [random.Random(300 + i).choice(["I'm new to {}. Where should I start?",
                                            "I want to get into {}. What do I need to know?"]).format(t)
             for i, t in enumerate(items(START))]
    rows = list(dict.fromkeys(rows))
    random.Random(0).shuffle(rows)
    out = Path(__file__).with_name("everyday_prompts.jsonl")
    with out.open("w") as f:
        for i, text in enumerate(rows):
            f.write(json.dumps({"id": f"everyday-{i:03d}", "prompt": text}) + "\n")
    print(f"{len(rows)} prompts -> {out}")


if __name__ == "__main__":
    main()
